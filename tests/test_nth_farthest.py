"""NthFarthestDataModule: encoding widths, labels against brute force, seeds and streams."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from datamodules import NthFarthestDataModule, make_nth_farthest


def decode(row_block: torch.Tensor, K: int, F: int):
    """Rows [K, F + 3K] -> (vectors by id, n, m)."""
    vectors = {}
    for row in row_block:
        vectors[int(row[F : F + K].argmax())] = row[:F].tolist()
    n = int(row_block[0, F + K : F + 2 * K].argmax())
    m = int(row_block[0, F + 2 * K :].argmax())
    return vectors, n, m


@pytest.mark.parametrize("K,F", [(2, 1), (4, 4), (8, 16), (5, 3)])
def test_labels_agree_with_brute_force(K, F):
    inputs, labels, _, groups = make_nth_farthest(300, K, F, torch.Generator().manual_seed(K * 100 + F))
    assert inputs.shape == (300, K, F + 3 * K) and inputs.dtype == torch.float32
    assert labels.shape == (300,) and labels.dtype == torch.int64
    for block, label in zip(inputs, labels.tolist(), strict=True):
        vectors, n, m = decode(block, K, F)
        assert sorted(vectors) == list(range(K))  # every id exactly once
        distance = {
            i: sum((a - b) ** 2 for a, b in zip(v, vectors[m], strict=True)) ** 0.5
            for i, v in vectors.items()
        }
        farthest_first = sorted(distance, key=lambda i: -distance[i])
        assert label == farthest_first[n]
        # The one-hot blocks are exact one-hots, the same n and m on every row.
        for row in block:
            for start in (F, F + K, F + 2 * K):
                assert sorted(row[start : start + K].tolist()) == [0.0] * (K - 1) + [1.0]
        assert (block[:, F + K :] == block[0, F + K :]).all()
        assert all(-1.0 <= x <= 1.0 for v in vectors.values() for x in v)
    # The groups that evaluation reports accuracy by are n, read back from the rows.
    assert groups.tolist() == [decode(block, K, F)[1] for block in inputs]


def test_rows_are_shuffled_and_questions_vary():
    inputs, labels, _, _ = make_nth_farthest(2000, 4, 4, torch.Generator().manual_seed(0))
    first_ids = inputs[:, 0, 4:8].argmax(-1)
    assert set(first_ids.tolist()) == {0, 1, 2, 3}
    assert set(labels.tolist()) == {0, 1, 2, 3}
    n = inputs[:, 0, 8:12].argmax(-1)
    m = inputs[:, 0, 12:16].argmax(-1)
    # n = K - 1 asks for m itself.
    assert (labels[n == 3] == m[n == 3]).all()
    assert (labels[n == 0] != m[n == 0]).all()
    for value in range(4):  # roughly uniform n and m
        assert 0.2 < (n == value).float().mean() < 0.3
        assert 0.2 < (m == value).float().mean() < 0.3


def test_datamodule_sizes_and_fixed_eval_sets():
    dm = NthFarthestDataModule(
        num_vectors=4, num_features=4, batch_size=32, batches_per_epoch=3, val_size=70, test_size=50
    )
    assert dm.input_size == 16 and dm.num_classes == 4
    dm.setup("fit")
    loader = dm.train_dataloader()
    train = list(loader)
    assert len(train) == 3 and len(loader) == 3
    x, y = train[0].inputs, train[0].labels
    assert x.shape == (32, 4, 16) and y.shape == (32,) and train[0].groups.shape == (32,)
    # A new epoch (pass over the loader) draws new problems.
    again = list(loader)
    assert not torch.equal(again[0][0], train[0][0])
    val = torch.cat([b[0] for b in dm.val_dataloader()])
    test = torch.cat([b[0] for b in dm.test_dataloader()])
    assert val.shape[0] == 70 and test.shape[0] == 50
    other = NthFarthestDataModule(num_vectors=4, num_features=4, batch_size=32, val_size=70, test_size=50)
    assert torch.equal(val, torch.cat([b[0] for b in other.val_dataloader()]))
    assert not torch.equal(val[:50], test)


def small(**kwargs):
    return NthFarthestDataModule(
        **{"num_vectors": 3, "num_features": 2, "batch_size": 8, "batches_per_epoch": 2, **kwargs}
    )


def first_batch(dm):
    return next(iter(dm.train_dataloader()))[0]


def test_training_stream_depends_on_seed_rank_and_epoch_only():
    assert torch.equal(first_batch(small(train_seed=5)), first_batch(small(train_seed=5)))
    assert not torch.equal(first_batch(small(train_seed=5)), first_batch(small(train_seed=6)))
    # Without a Trainer, each pass over the loader is a new epoch.
    loader = small(train_seed=5).train_dataloader()
    epochs = [torch.cat([batch.inputs for batch in loader]) for _ in range(3)]
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    # Under a Trainer the epoch and the rank come from it: a run resumed at epoch 2 draws what epoch 2 drew.
    resumed = small(train_seed=5)
    resumed.trainer = SimpleNamespace(global_rank=0, current_epoch=2)
    assert torch.equal(torch.cat([batch.inputs for batch in resumed.train_dataloader()]), epochs[2])
    other_rank = small(train_seed=5)
    other_rank.trainer = SimpleNamespace(global_rank=1, current_epoch=2)
    assert not torch.equal(torch.cat([batch.inputs for batch in other_rank.train_dataloader()]), epochs[2])


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"num_vectors": 1}, "num_vectors"),
        ({"batch_size": 0}, "batch_size"),
        ({"val_size": -3}, "val_size"),
        ({"set_steps": 0}, "set_steps"),
        ({"presentation": "matrix"}, "presentation"),
    ],
)
def test_bad_arguments(kwargs, name):
    value = next(iter(kwargs.values()))
    with pytest.raises(
        ValueError, match=f"{name}={value!r}" if isinstance(value, str) else f"{name}={value}"
    ):
        NthFarthestDataModule(**kwargs)


def test_set_presentation_gives_every_step_the_whole_set():
    """``presentation="set"``: the same problems as the sequence, each step reading all K rows."""
    sets = small(presentation="set", set_steps=3, val_size=10, test_size=10)
    sequences = small(val_size=10, test_size=10)
    batch, reference = next(iter(sets.val_dataloader())), next(iter(sequences.val_dataloader()))
    assert batch.inputs.shape == (8, 3, 3, 2 + 3 * 3)  # [B, set_steps, K, F + 3K]
    for step in range(3):
        assert torch.equal(batch.inputs[:, step], reference.inputs)
    assert torch.equal(batch.labels, reference.labels) and torch.equal(batch.groups, reference.groups)
    training = next(iter(sets.train_dataloader()))
    assert training.inputs.shape == (8, 3, 3, 11)
    assert torch.equal(training.inputs[:, 0], next(iter(sequences.train_dataloader())).inputs)
    text = sets.describe_example(batch, 0, None)
    assert text.steps == ["all 1", "all 2", "all 3"]
    assert text.lines == sequences.describe_example(reference, 0, None).lines


def test_docstring_example_is_right():
    vectors = torch.tensor([[0.5, -0.5], [-0.9, 0.1], [-1.0, 0.0]])
    distance = (vectors - vectors[2]).norm(dim=-1)
    assert distance.argsort(descending=True).tolist() == [0, 1, 2]
    assert [round(d, 2) for d in distance.tolist()] == [1.58, 0.14, 0.0]
    assert "1.58" in NthFarthestDataModule.__doc__ and "0.14" in NthFarthestDataModule.__doc__


def test_a_loader_resumes_mid_epoch_from_its_state():
    """What Lightning saves of the training loader in a checkpoint puts a new loader where the old one was."""
    loader = small(train_seed=5, batches_per_epoch=4).train_dataloader()
    list(loader)  # epoch 0
    batches = iter(loader)  # epoch 1
    next(batches)
    state = loader.state_dict()
    assert state == {"epoch": 1, "batches": 1}
    rest = [batch.inputs for batch in batches]
    resumed_dm = small(train_seed=5, batches_per_epoch=4)
    resumed_dm.trainer = SimpleNamespace(global_rank=0, current_epoch=1)
    resumed = resumed_dm.train_dataloader()
    resumed.load_state_dict(state)
    again = [batch.inputs for batch in resumed]
    assert len(again) == len(rest) == 3 and all(torch.equal(a, b) for a, b in zip(again, rest, strict=True))
    assert len(list(resumed)) == 4  # the state applies to the one pass it was taken in


@pytest.mark.parametrize("config", ["rmc_cpu.yaml", "lstm_cpu.yaml", "rmc_sequence_cpu.yaml"])
def test_accuracy_per_n_adds_up_to_the_accuracy(tmp_path, config):
    """A short seeded run reports validation accuracy per n (``val/acc_by_group/<n>``); weighted by how many
    validation questions ask for each n, they give back ``val/acc``."""
    from rrn_lightning.cli import cli_main

    cli = cli_main(
        [
            "fit",
            f"--config={Path(__file__).resolve().parents[1] / 'experiments' / 'nth_farthest' / config}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_steps=3",
            "--trainer.val_check_interval=3",
            "--trainer.check_val_every_n_epoch=null",
            "--trainer.enable_progress_bar=false",
            "--data.init_args.batch_size=16",
            "--data.init_args.val_size=100",  # 7 batches, the last one short
        ]
    )
    metrics = cli.trainer.callback_metrics
    groups = torch.cat([batch.groups for batch in cli.datamodule.val_dataloader()])
    counts = torch.bincount(groups, minlength=4)
    assert counts.sum() == 100 and (counts > 0).all()
    per_n = torch.stack([metrics[f"val/acc_by_group/{n}"] for n in range(4)])
    assert ((per_n >= 0) & (per_n <= 1)).all()
    assert torch.allclose((per_n * counts).sum() / 100, metrics["val/acc"], atol=1e-6)
