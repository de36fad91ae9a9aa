"""Learning to Execute programs and curricula, sorting, and the sequence-to-sequence module."""

import contextlib
import io
import math
import random
from pathlib import Path

import pytest
import torch

from datamodules import Curriculum, CurriculumCallback, LearnToExecuteDataModule, SortingDataModule
from datamodules.learn_to_execute import VOCAB, decode, encode_batch
from datamodules.programs import MEMORY_TASKS, PROGRAM_TASKS, generate
from rrn_lightning import LSTMCore, RelationalMemory, Seq2Seq
from rrn_lightning.cli import cli_main
from rrn_lightning.common import EOS_ID, IGNORE_INDEX
from rrn_lightning.tasks import SequenceAccuracy

ROOT = Path(__file__).resolve().parents[1]
V = len(VOCAB)
CONFIGS = sorted((ROOT / "experiments" / "learn_to_execute").glob("*.yaml")) + sorted(
    (ROOT / "experiments" / "sorting").glob("*.yaml")
)


def run_program(source: str) -> str:
    """Execute a generated program with nothing but print and range available; return what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(source, {"__builtins__": {"print": print, "range": range}})  # noqa: S102 - our own generator
    return out.getvalue()


# --------------------------------------------------------------------- programs
@pytest.mark.parametrize("task", PROGRAM_TASKS)
def test_programs_print_their_targets(task):
    rng = random.Random(task)
    for length in (1, 2, 3, 5):
        for nesting in (1, 2, 3, 4):
            for _ in range(150):
                sample = generate(task, length, nesting, rng)
                assert sample.source.splitlines()[-1].startswith("print(")
                assert run_program(sample.source) == sample.target + "\n", sample.source


def test_program_features_appear():
    rng = random.Random(0)
    control = "".join(generate("control", 3, 3, rng).source for _ in range(300))
    program = "".join(generate("program", 3, 3, rng).source for _ in range(300))
    for piece in (" if ", "<", ">", "for x in range(", "="):
        assert piece in control, piece
    for piece in ("-", "*", " else ", "for x in range("):
        assert piece in program, piece
    assert "-" not in control and "*" not in control
    # Loop counts and small multipliers stay within 4L, as in the original.
    for _ in range(300):
        source = generate("program", 2, 3, rng).source
        for count in [int(s.split(")")[0]) for s in source.split("range(")[1:]]:
            assert 1 <= count <= 8


@pytest.mark.parametrize("task", MEMORY_TASKS)
def test_memorisation_targets(task):
    rng = random.Random(1)
    for length in (1, 4, 7):
        for _ in range(100):
            sample = generate(task, length, 1, rng)
            assert len(sample.source) == length and sample.source.isdigit()
            expected = {"copy": sample.source, "reverse": sample.source[::-1], "double": sample.source * 2}[
                task
            ]
            assert sample.target == expected


def test_encoding_round_trip():
    inputs, lengths, targets, target_lengths = encode_batch([("print((41+73))", "114"), ("7", "-3")])
    assert inputs.shape == (2, 15, inputs.shape[-1]) and lengths.tolist() == [15, 2]
    assert inputs[1, 2:].abs().sum() == 0  # padding reads as zeros
    assert targets[0].tolist()[-1] == EOS_ID and targets[1, 3:].eq(IGNORE_INDEX).all()
    assert decode(targets[0].tolist()) == "114" and decode(targets[1, :3].tolist()) == "-3"
    assert target_lengths.tolist() == [4, 3]


# --------------------------------------------------------------------- curricula
def test_naive_raises_only_after_a_plateau_and_resets_length():
    c = Curriculum("naive", length=2, nesting=2, threshold=0.05, window=3)
    assert c.current == (1, 1)
    for loss in (1.0, 0.8, 0.6, 0.5):  # still improving by more than 5% of the mean
        assert not c.update(loss)
    assert c.current == (1, 1)
    c.update(0.5)
    assert c.update(0.5) and c.current == (2, 1)  # flat window: length + 1
    for loss in (0.4, 0.4):
        assert not c.update(loss)
    assert c.update(0.4) and c.current == (1, 2)  # length at its maximum: nesting + 1, length back to 1
    for _ in range(3):
        c.update(0.3)
    assert c.current == (2, 2)
    for _ in range(10):
        assert not c.update(0.3)  # at the target level it stays
    assert c.current == (2, 2)


def test_mix_and_combined_sample_as_defined():
    rng = random.Random(0)
    mix = Curriculum("mix", length=4, nesting=3)
    draws = [mix.sample(rng) for _ in range(12000)]
    for value in range(1, 5):
        share = sum(d[0] == value for d in draws) / len(draws)
        assert abs(share - 0.25) < 0.02
    for value in range(1, 4):
        assert abs(sum(d[1] == value for d in draws) / len(draws) - 1 / 3) < 0.02
    combined = Curriculum("combined", length=4, nesting=3)
    combined.set_level(2, 1)
    draws = [combined.sample(rng) for _ in range(12000)]
    at_level = sum(d == (2, 1) for d in draws) / len(draws)
    assert (
        abs(at_level - (0.5 + 0.5 / 12)) < 0.02
    )  # half from naive's level, plus mix's 1/12 of landing there
    assert Curriculum("baseline", 4, 3).sample(rng) == (4, 3)


def test_level_is_shared_with_worker_processes():
    c = Curriculum("naive", 3, 2)
    assert c.level.is_shared()
    c.set_level(3, 1)
    assert c.current == (3, 1)


def tiny_seq2seq(**kwargs) -> Seq2Seq:
    torch.manual_seed(0)
    core = kwargs.pop("core", None) or RelationalMemory(
        V, mem_slots=2, head_size=8, num_heads=2, gate_style="memory"
    )
    return Seq2Seq(core, num_classes=V, head_sizes=(16,), **kwargs)


def test_level_survives_a_checkpoint_round_trip(tmp_path):
    dm = LearnToExecuteDataModule(
        task="addition", length=3, curriculum="naive", batch_size=8, batches_per_epoch=3
    )
    callback = CurriculumCallback(every_n_steps=1, batch_size=8)
    cli_args = dict(max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False)
    import lightning

    trainer = lightning.Trainer(callbacks=[callback], default_root_dir=tmp_path, **cli_args)
    trainer.fit(tiny_seq2seq(), datamodule=dm)
    dm.curriculum.set_level(3, 1)
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    dm2 = LearnToExecuteDataModule(
        task="addition", length=3, curriculum="naive", batch_size=8, batches_per_epoch=3
    )
    callback2 = CurriculumCallback(every_n_steps=1000, batch_size=8)
    trainer2 = lightning.Trainer(
        callbacks=[callback2], default_root_dir=tmp_path, **{**cli_args, "max_steps": 3}
    )
    trainer2.fit(tiny_seq2seq(), datamodule=dm2, ckpt_path=tmp_path / "c.ckpt")
    assert dm2.curriculum.current == (3, 1)


def test_adaptive_curriculum_without_its_callback_is_refused(tmp_path):
    import lightning

    dm = LearnToExecuteDataModule(
        task="addition", length=2, curriculum="naive", batch_size=4, batches_per_epoch=2
    )
    trainer = lightning.Trainer(
        max_steps=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    with pytest.raises(ValueError, match="CurriculumCallback"):
        trainer.fit(tiny_seq2seq(), datamodule=dm)


def test_the_curriculum_link_runs_from_the_callback_to_the_data(tmp_path):
    """The data module looks at no callbacks (issue 21): any driver that marks the curriculum as driven will do."""
    import lightning

    class HandDriver(lightning.Callback):
        def setup(self, trainer, pl_module, stage):
            trainer.datamodule.curriculum.driven = True

    dm = LearnToExecuteDataModule(
        task="addition", length=2, curriculum="naive", batch_size=4, batches_per_epoch=2
    )
    trainer = lightning.Trainer(
        max_steps=1,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        callbacks=[HandDriver()],
    )
    trainer.fit(tiny_seq2seq(), datamodule=dm)
    assert trainer.global_step == 1 and dm.curriculum.current == (1, 1)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"length": 0}, "length must be a positive integer, got length=0"),
        ({"nesting": 0}, "nesting must be a positive integer, got nesting=0"),
        ({"length": 13}, "at most 12, got length=13"),
        (
            {"task": "sort"},
            "task must be one of addition, control, program, copy, reverse, double, got task='sort'",
        ),
        (
            {"curriculum": "easy"},
            "curriculum must be one of baseline, naive, mix, combined, got curriculum='easy'",
        ),
        ({"curriculum_threshold": -0.1}, "curriculum_threshold=-0.1"),
        ({"num_workers": -1}, "num_workers=-1"),
    ],
)
def test_learn_to_execute_rejects_bad_arguments(kwargs, expected):
    with pytest.raises(ValueError) as error:
        LearnToExecuteDataModule(**kwargs)
    assert expected in str(error.value)
    assert str(error.value).startswith("LearnToExecuteDataModule: ")


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"length": 0}, "length must be a positive integer, got length=0"),
        ({"numbers": "float"}, "numbers must be 'int' or 'real', got numbers='float'"),
        ({"target": "ranks"}, "target must be 'values' or 'indices', got target='ranks'"),
        ({"low": 5, "high": 5}, "need low < high"),
        ({"low": 0.5, "high": 10}, "got low=0.5"),
    ],
)
def test_sorting_rejects_bad_arguments(kwargs, expected):
    with pytest.raises(ValueError, match="SortingDataModule: ") as error:
        SortingDataModule(**kwargs)
    assert expected in str(error.value)


def test_cli_names_a_bad_task_without_a_traceback(tmp_path, capsys):
    config = ROOT / "experiments" / "learn_to_execute" / "addition_lstm_cpu.yaml"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            [
                "fit",
                "--config",
                str(config),
                "--data.init_args.task=multiply",
                f"--trainer.default_root_dir={tmp_path}",
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "got task='multiply'" in err and "Traceback" not in err


def test_evaluation_sets_are_fixed_at_the_target_level():
    dm = LearnToExecuteDataModule(
        task="control", length=2, nesting=2, curriculum="naive", val_size=20, batch_size=8
    )
    first = [b[0] for b in dm.val_dataloader()]
    again = LearnToExecuteDataModule(task="control", length=2, nesting=2, val_size=20, batch_size=8)
    assert all(torch.equal(a, b) for a, b in zip(first, [b[0] for b in again.val_dataloader()], strict=True))
    assert sum(b.shape[0] for b in first) == 20


# --------------------------------------------------------------------- sorting
@pytest.mark.parametrize("numbers,target", [("int", "values"), ("int", "indices"), ("real", "indices")])
def test_sorting_targets_are_sorted_permutations(numbers, target):
    dm = SortingDataModule(
        length=7, numbers=numbers, low=0, high=(5 if numbers == "int" else 1), target=target
    )
    inputs, lengths, targets, target_lengths = dm.make(50, torch.Generator().manual_seed(0))
    values = inputs.argmax(-1) if numbers == "int" else inputs[..., 0]
    if target == "values":
        assert torch.equal(targets, values.sort(dim=1).values)
    else:
        assert sorted(targets[0].tolist()) == list(range(7))
        picked = values.gather(1, targets)
        assert (picked[:, 1:] >= picked[:, :-1]).all()
    assert lengths.eq(7).all() and target_lengths.eq(7).all()


def test_sorting_rejects_real_values_target():
    with pytest.raises(ValueError, match="numbers='int'"):
        SortingDataModule(numbers="real", high=1, target="values")


# --------------------------------------------------------------------- the module
def test_masked_loss_ignores_padding():
    model = tiny_seq2seq()
    inputs, lengths, targets, target_lengths = encode_batch(
        [("print((1+2))", "3"), ("print((41+73))", "114")]
    )
    loss = model.batch_loss((inputs, lengths, targets, target_lengths))
    changed = inputs.clone()
    changed[0, lengths[0] :] = 5.0  # garbage in the first example's input padding
    assert torch.allclose(model.batch_loss((changed, lengths, targets, target_lengths)), loss, atol=1e-6)


def test_accuracies_agree_with_a_hand_count():
    targets = torch.tensor([[1, 2, 3, IGNORE_INDEX], [4, 5, IGNORE_INDEX, IGNORE_INDEX], [6, 7, 8, 9]])
    predictions = torch.tensor([[1, 2, 3, 0], [4, 0, 9, 9], [6, 7, 8, 0]])
    char, seq = SequenceAccuracy(), SequenceAccuracy(whole_sequence=True)
    char.update(predictions, targets)
    seq.update(predictions, targets)
    assert char.compute().item() == pytest.approx(7 / 9)  # 3 + 1 + 3 right of 3 + 2 + 4 real positions
    assert seq.compute().item() == pytest.approx(1 / 3)  # only the first sequence is right everywhere


@pytest.mark.parametrize("autoregressive", [False, True])
@pytest.mark.parametrize("decoder", [False, True])
def test_decoding_modes_run(autoregressive, decoder):
    decoder_core = LSTMCore(V, 16) if decoder else None
    core = LSTMCore(V, 16) if decoder else None
    model = tiny_seq2seq(core=core, decoder_core=decoder_core, autoregressive=autoregressive)
    inputs, lengths, targets, _ = encode_batch([("print((1+2))", "3"), ("print((41+73))", "114")])
    logits = model(inputs, lengths, targets.shape[1], targets)
    assert logits.shape == (2, 4, V)
    greedy = model(inputs, lengths, 4)
    assert greedy.shape == (2, 4, V) and math.isfinite(greedy.sum().item())


def test_decoder_state_must_match():
    with pytest.raises(ValueError, match="decoder_core must carry a state"):
        tiny_seq2seq(decoder_core=LSTMCore(V, 16))


@pytest.mark.smoke
# --------------------------------------------------------------------- configs
@pytest.mark.parametrize("config", CONFIGS, ids=[f"{c.parent.name}/{c.stem}" for c in CONFIGS])
def test_every_seq2seq_config_runs_fast_dev_run(config, tmp_path):
    small = []
    if config.stem in ("rmc", "lstm"):  # paper scale, shrunk for the suite
        small = [
            "--data.init_args.batch_size=8",
            "--model.init_args.head_sizes=[16]",
            (
                "--model.init_args.core.init_args.head_size=8"
                if config.stem == "rmc"
                else "--model.init_args.core.init_args.hidden_size=16"
            ),
        ]
    cli = cli_main(
        [
            "fit",
            f"--config={config}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.fast_dev_run=true",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            *small,
        ]
    )
    assert cli.model.core.input_size == cli.datamodule.input_size
    assert math.isfinite(cli.trainer.callback_metrics["train/loss"].item())


def _literal_digits(inputs: torch.Tensor, lengths: torch.Tensor) -> set[int]:
    """Digits per literal in a batch of encoded addition programs ``print((a+b))``."""
    sizes = set()
    for row, length in zip(inputs, lengths, strict=True):
        text = "".join(VOCAB[i] for i in row[: length - 1].argmax(-1).tolist())
        a, b = text[len("print((") : -len("))")].split("+")
        sizes |= {len(a), len(b)}
    return sizes


def test_data_loader_workers_follow_the_curriculum_level():
    dm = LearnToExecuteDataModule(
        task="addition", length=4, curriculum="naive", batch_size=16, batches_per_epoch=40, num_workers=2
    )
    loader = dm.train_dataloader()
    batches = iter(loader)
    first = next(batches)
    assert _literal_digits(first[0], first[1]) == {1}  # naive starts at length 1
    dm.curriculum.set_level(4, 1)  # as the callback would, while the workers are running
    later = list(batches)[-10:]  # past what the workers had prefetched
    assert all(_literal_digits(b[0], b[1]) == {4} for b in later)


def test_metrics_follow_one_convention_and_old_checkpoints_still_load(tmp_path):
    """Every task adds its metrics with add_metric (issue 21); a Seq2Seq checkpoint written when its accuracies
    lived in a ModuleDict (metrics.train_char.*) loads with its sums under the new names."""
    model = tiny_seq2seq()
    children = {name for name, _ in model.named_children()}
    assert {"train_loss", "train_char_acc", "val_seq_acc"} <= children and "metrics" not in children
    model.metric("train", "char_acc").correct += 7
    state = {
        key.replace("train_char_acc.", "metrics.train_char.").replace(
            "train_seq_acc.", "metrics.train_seq."
        ): value
        for key, value in model.state_dict().items()
    }
    assert "metrics.train_char.correct" in state
    torch.save(
        {"state_dict": state, "pytorch-lightning_version": "2.6.0", "hyper_parameters": dict(model.hparams)},
        tmp_path / "old.ckpt",
    )
    core = RelationalMemory(V, mem_slots=2, head_size=8, num_heads=2, gate_style="memory")
    loaded = Seq2Seq.load_from_checkpoint(tmp_path / "old.ckpt", core=core)
    assert int(loaded.metric("train", "char_acc").correct) == 7
