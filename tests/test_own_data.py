"""Your own sequences: ``SequenceDataModule`` on .npz and .pt files, its errors, and ``rrn fit`` / ``rrn predict``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import SequenceDataModule
from rrn_lightning.cli import cli_main
from rrn_lightning.common import ConfigurationError

EXPERIMENTS = Path(__file__).parents[1] / "experiments" / "own_data"


def samples_text(run: Path) -> str:
    """The last ``samples/examples`` text a run wrote to TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from test_insight import text_of

    events = EventAccumulator(str(run), size_guidance={"tensors": 0})
    events.Reload()
    return text_of(events, "samples/examples")


def fixed(tmp_path: Path, n: int = 50, name: str = "fixed.npz", **extra) -> Path:
    rng = np.random.default_rng(0)
    inputs = rng.normal(3.0, 2.0, size=(n, 6, 4)).astype(np.float32)
    labels = (inputs[:, :, 0].mean(1) > 3.0).astype(np.int64)
    path = tmp_path / name
    np.savez(path, **{"inputs": inputs, "labels": labels, **extra})
    return path


def ragged(tmp_path: Path, n: int = 40, name: str = "ragged.npz", labels=None) -> Path:
    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=(int(rng.integers(2, 7)), 3)) for _ in range(n)]
    if labels is None:
        labels = np.array(["up" if s[:, 0].sum() > 0 else "down" for s in inputs])
    path = tmp_path / name
    np.savez(path, inputs=np.array(inputs, dtype=object), labels=labels)
    return path


def test_fixed_length_arrays_split_and_standardised_on_training_data_only(tmp_path):
    data = SequenceDataModule(str(fixed(tmp_path)), batch_size=8)
    assert (data.input_size, data.num_classes, data.class_names) == (4, 2, ["0", "1"])
    assert data.split_sizes() == {"val": 5, "test": 5, "train": 40}
    train = torch.cat([b.inputs for b in data.train_dataloader()])
    assert train.shape == (40, 6, 4)
    assert torch.allclose(train.flatten(0, 1).mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(train.flatten(0, 1).std(0, unbiased=False), torch.ones(4), atol=1e-5)
    # Validation is scaled by the training split's statistics, not its own.
    raw = np.load(fixed(tmp_path))["inputs"]
    val = next(iter(data.val_dataloader()))
    order = torch.randperm(50, generator=torch.Generator().manual_seed(0))[:5]
    expected = (torch.as_tensor(raw)[order] - data.mean) / data.std
    assert torch.allclose(val.inputs, expected, atol=1e-5) and val.lengths is None
    unscaled = SequenceDataModule(str(fixed(tmp_path)), standardize=False)
    assert torch.allclose(next(iter(unscaled.val_dataloader())).inputs, torch.as_tensor(raw)[order])


def test_sequences_of_different_lengths_and_string_labels(tmp_path):
    data = SequenceDataModule(str(ragged(tmp_path)), batch_size=40, val_fraction=0.25, test_fraction=0.25)
    assert data.class_names == ["down", "up"] and data.input_size == 3
    batch = next(iter(data.train_dataloader()))
    assert batch.lengths is not None and batch.inputs.shape[1] == int(batch.lengths.max())
    steps = torch.arange(batch.inputs.shape[1])
    assert (batch.inputs[steps[None, :] >= batch.lengths[:, None]] == 0).all()  # padding stays zero
    described = data.describe_example(batch, 0, batch.labels[0])
    assert (
        described.lines[1]
        == f"class {data.class_names[int(batch.labels[0])]}, model {data.class_names[int(batch.labels[0])]}"
    )


def test_split_files_a_pt_file_and_given_lengths(tmp_path):
    train = fixed(tmp_path, 30, "train.npz")
    rng = np.random.default_rng(3)
    torch.save(
        {
            "inputs": torch.randn(7, 6, 4),
            "labels": torch.tensor([0, 1] * 3 + [1]),
            "lengths": torch.tensor([6, 3] * 3 + [1]),
        },
        tmp_path / "val.pt",
    )
    test = fixed(tmp_path, 9, "test.npz", lengths=rng.integers(1, 7, size=9))
    data = SequenceDataModule(str(train), val_path=str(tmp_path / "val.pt"), test_path=str(test))
    assert data.split_sizes() == {"val": 7, "test": 9, "train": 30}
    assert torch.equal(next(iter(data.val_dataloader())).lengths, torch.tensor([6, 3] * 3 + [1]))


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda p: np.savez(p / "f.npz", inputs=np.zeros((4, 3, 2))),
            "has no 'labels' array (it has: inputs)",
        ),
        (
            lambda p: np.savez(p / "f.npz", inputs=np.zeros((4, 3, 2)), labels=np.zeros(5, dtype=int)),
            "labels must have one entry per sequence, [N]=[4], got shape [5]",
        ),
        (
            lambda p: np.savez(p / "f.npz", inputs=np.full((4, 3, 2), np.nan), labels=np.zeros(4, dtype=int)),
            "inputs has NaN or infinite values (first in sequence 0)",
        ),
        (
            lambda p: np.savez(p / "f.npz", inputs=np.zeros((4, 3, 2)), labels=np.array([0, 1, -1, 0])),
            "labels must be class ids from 0, got -1",
        ),
        (
            lambda p: np.savez(
                p / "f.npz",
                inputs=np.array([np.zeros((3, 2)), np.zeros((2, 5))], dtype=object),
                labels=np.zeros(2, dtype=int),
            ),
            "sequences must share their feature count D to be padded to one array; sequence 0 has 2, sequence 1 has 5",
        ),
        (
            lambda p: np.savez(p / "f.npz", inputs=np.zeros((4, 3, 2, 2)), labels=np.zeros(4, dtype=int)),
            "must be [N, T, D] (or [N, T]) or a list of [T_i, D] arrays, got shape [4, 3, 2, 2]",
        ),
        (
            lambda p: np.savez(p / "f.npz", inputs=np.zeros((4, 3, 2)), labels=np.array([0.5, 1, 0, 1])),
            "labels must be integer class ids or strings, got float values",
        ),
    ],
    ids=["missing-key", "label-count", "nan", "negative-label", "ragged-features", "rank", "float-labels"],
)
def test_bad_files_are_named_in_one_line(make, message, tmp_path):
    make(tmp_path)
    with pytest.raises(ConfigurationError) as error:
        SequenceDataModule(str(tmp_path / "f.npz"))
    text = str(error.value)
    assert message in text and "path=" in text and "\n" not in text


def test_bad_split_files_and_arguments(tmp_path):
    train = ragged(tmp_path, labels=np.array(["a", "b"] * 20))
    other = ragged(tmp_path, 6, "val.npz", labels=np.array(["a", "c"] * 3))
    with pytest.raises(ConfigurationError, match="val_path=.*label 'c' is not a class of the training split"):
        SequenceDataModule(str(train), val_path=str(other))
    numbered = ragged(tmp_path, 6, "numbered.npz", labels=np.array([0, 1] * 3))
    with pytest.raises(
        ConfigurationError, match="val_path=.*labels are class ids, but the training split's are names"
    ):
        SequenceDataModule(str(train), val_path=str(numbered))
    ints = fixed(tmp_path, 20)
    high = fixed(tmp_path, 5, "high.npz")
    np.savez(high, inputs=np.zeros((5, 6, 4)), labels=np.array([0, 1, 2, 0, 1]))
    with pytest.raises(
        ConfigurationError, match="test_path=.*label 2 is out of range: the training split has 2"
    ):
        SequenceDataModule(str(ints), test_path=str(high))
    with pytest.raises(ConfigurationError, match="leave nothing to train on"):
        SequenceDataModule(str(ints), val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ConfigurationError, match=r"must end in \.npz or \.pt"):
        (tmp_path / "f.csv").write_text("1,2\n")
        SequenceDataModule(str(tmp_path / "f.csv"))
    with pytest.raises(ConfigurationError, match="path is required"):
        SequenceDataModule()


def test_training_batches_are_reshuffled_per_epoch_and_resume_mid_epoch(tmp_path):
    data = SequenceDataModule(str(fixed(tmp_path)), batch_size=8)
    stream = data.train_dataloader().dataset
    epoch0 = [b.labels for b in stream.batches(0, 0)]
    assert len(epoch0) == 5
    assert all(torch.equal(a.labels, b) for a, b in zip(stream.batches(0, 0), epoch0, strict=True))
    assert not all(torch.equal(a.labels, b) for a, b in zip(stream.batches(1, 0), epoch0, strict=True))
    assert all(torch.equal(a.labels, b) for a, b in zip(stream.batches(0, 2), epoch0[2:], strict=True))


def test_fit_then_predict_through_the_cli(tmp_path, capsys):
    common = [
        f"--config={EXPERIMENTS / 'sequences_rmc.yaml'}",
        f"--data.init_args.path={ragged(tmp_path, 60)}",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
        "--trainer.max_epochs=2",
        "--trainer.enable_progress_bar=false",
    ]
    cli = cli_main(["fit", *common])
    assert cli.model.class_names == ["down", "up"] and cli.model.core.input_size == 3
    run = Path(cli.trainer.log_dir)
    # TensorBoard's samples put the validation examples in words, with the class and the model's by name.
    text = samples_text(run)
    assert text.count("a sequence of ") == 3 and text.count("features; step 0: (") == 3
    assert re.search(r"class (down|up), model (down|up)", text)
    cli_main(
        ["predict", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "--trainer.enable_progress_bar=false"]
    )
    assert "predictions_test.pt (the test split, 6 examples" in capsys.readouterr().out
    predictions = torch.load(run / "predictions_test.pt", weights_only=True)
    assert predictions["class_names"] == ["down", "up"]
    assert predictions["prediction"].shape == predictions["target"].shape == (6,)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["class_names"] == ["down", "up"]
    assert checkpoint["SequenceDataModule"]["classes"] == ["down", "up"]


@pytest.mark.parametrize("config", sorted(EXPERIMENTS.glob("sequences_*.yaml")), ids=lambda c: c.stem)
def test_own_data_configs_run(config, tmp_path):
    args = [
        f"--config={config}",
        f"--data.init_args.path={fixed(tmp_path)}",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    cli = cli_main(["fit", *args, "--trainer.fast_dev_run=true"])
    assert cli.model.core.input_size == 4 and cli.model.class_names == ["0", "1"]


def test_the_digits_example_writes_sequences_the_data_module_reads(tmp_path):
    pytest.importorskip("sklearn")
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "digits_to_npz", Path(__file__).parents[1] / "examples" / "digits_to_npz.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(tmp_path / "digits.npz")]) == 0
    data = SequenceDataModule(str(tmp_path / "digits.npz"))
    assert (data.input_size, data.num_classes) == (8, 10)
    assert data.split_sizes() == {"val": 180, "test": 180, "train": 1437}


def test_the_readmes_own_data_module_trains_through_the_cli(tmp_path, monkeypatch):
    """The README's 20-line data module, as written there, with `rrn fit --data=my_sensors.MySensors`."""
    import re
    import sys

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    (code,) = [
        block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "class MySensors" in block
    ]
    (tmp_path / "my_sensors.py").write_text(code)
    torch.save({"x": torch.randn(260, 5, 3), "y": torch.randint(4, (260,))}, tmp_path / "sensors.pt")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_sensors", raising=False)
    cli = cli_main(
        [
            "fit",
            f"--config={EXPERIMENTS / 'sequences_rmc.yaml'}",
            "--data=my_sensors.MySensors",
            f"--data.init_args.path={tmp_path / 'sensors.pt'}",
            f"--trainer.default_root_dir={tmp_path / 'runs'}",
            "--trainer.max_epochs=1",
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert cli.model.core.input_size == 3 and cli.model.head[-1].out_features == 4
    assert cli.trainer.global_step == 1 and "val/acc" in cli.trainer.callback_metrics  # 60 examples, batch 64


def test_our_data_modules_satisfy_the_written_contract(tmp_path):
    """The data contract of rrn_lightning.common (SequenceData, TokenData), which the README describes."""
    from datamodules import (
        LearnToExecuteDataModule,
        NthFarthestDataModule,
        SortingDataModule,
        WordLMDataModule,
    )
    from rrn_lightning.common import SequenceData, TokenData

    for data in (
        NthFarthestDataModule(),
        LearnToExecuteDataModule(),
        SortingDataModule(),
        SequenceDataModule(str(fixed(tmp_path))),
    ):
        assert isinstance(data, SequenceData) and data.input_size > 0 and data.num_classes > 1, type(data)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split in ("train", "valid", "test"):
        (corpus / f"{split}.txt").write_text("a b c a\nb c a\n")
    words = WordLMDataModule(corpus=str(corpus), cache_dir=str(tmp_path / "cache"), batch_size=1, bptt=2)
    assert isinstance(words, TokenData) and words.vocab_size == len(words.vocab.itos) == 5
