"""What ``rrn fit`` shows in TensorBoard beyond the task's scalars (``rrn_lightning.insight``), read back with
TensorBoard's own event reader: a short run per task family, the cores' traces, the attention image's geometry."""

import io
from pathlib import Path

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from datamodules import SortingDataModule
from rrn_lightning import LSTMCore, RelationalMemory
from rrn_lightning.cli import cli_main
from rrn_lightning.insight import AttentionLayout, attention_image, chosen_steps, colorize

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
CORPUS = ROOT / "tests" / "data" / "gettysburg"
# Three training steps, logged at every step, and one validation batch at the end.
SHORT = [
    "--trainer.max_steps=3",
    "--trainer.max_epochs=-1",
    "--trainer.max_time=null",
    "--trainer.limit_val_batches=1",
    "--trainer.val_check_interval=3",
    "--trainer.check_val_every_n_epoch=null",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_progress_bar=false",
]
FAMILIES = {
    "nth_farthest": (
        "nth_farthest/rmc_cpu.yaml",
        ["--data.init_args.batch_size=16", "--data.init_args.val_size=32"],
    ),
    "learn_to_execute": (
        "learn_to_execute/addition_rmc_cpu.yaml",
        ["--data.init_args.batch_size=16", "--data.init_args.val_size=32"],
    ),
    "word_lm": (
        "language_modelling/ptb_rmc_small.yaml",
        [
            f"--data.init_args.corpus={CORPUS}",
            "--data.init_args.batch_size=4",
            "--data.init_args.eval_batch_size=4",
        ],
    ),
}


def fit(tmp_path: Path, config: str, *overrides: str) -> EventAccumulator:
    cli = cli_main(
        ["fit", "--config", str(EXPERIMENTS / config), f"--trainer.default_root_dir={tmp_path}"]
        + SHORT
        + list(overrides)
    )
    events = EventAccumulator(
        cli.trainer.log_dir, size_guidance={"images": 0, "histograms": 0, "tensors": 0, "scalars": 0}
    )
    events.Reload()
    return events


def text_of(events: EventAccumulator, tag: str) -> str:
    return events.Tensors(f"{tag}/text_summary")[-1].tensor_proto.string_val[0].decode()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_short_run_writes_curves_images_histograms_text_and_hparams(family, tmp_path):
    config, data = FAMILIES[family]
    events = fit(tmp_path, config, *data)
    tags = events.Tags()
    scalars = set(tags["scalars"])
    unit = "tokens" if family == "word_lm" else "examples"
    metric = {"nth_farthest": "acc", "learn_to_execute": "char_acc", "word_lm": "loss"}[
        family
    ]  # the monitored one
    expected = {
        "train/loss_step",
        "train/grad_norm",
        f"train/{unit}_per_s",
        "val/loss",
        f"hp/best_val_{metric}",
    }
    expected |= {
        f"hp/final_val_{metric}",
        "gates/input_mean",
        "gates/forget_mean",
    }
    assert expected <= scalars, expected - scalars
    assert any(tag.startswith("lr-") for tag in scalars)
    assert len(events.Scalars("train/grad_norm")) == 3 and all(
        e.value > 0 for e in events.Scalars("train/grad_norm")
    )
    assert all(e.value > 0 for e in events.Scalars(f"train/{unit}_per_s"))
    # hp/ values equal the validation they come from, at the same step.
    (val,) = events.Scalars(f"val/{metric}")
    (best,) = events.Scalars(f"hp/best_val_{metric}")
    assert (best.step, best.value) == (val.step, pytest.approx(val.value))

    (image,) = events.Images("attention/example")
    png = Image.open(io.BytesIO(image.encoded_image_string))
    assert (
        png.format == "PNG" and png.size == (image.width, image.height) and len(png.getcolors(1 << 16)) > 10
    )

    assert {"gates/input", "gates/forget"} <= set(tags["histograms"])
    histogram = events.Histograms("gates/forget")[-1].histogram_value
    assert histogram.min >= 0 and histogram.max <= 1 and histogram.num > 0

    if family == "word_lm":
        text = text_of(events, "samples/continuation")
        assert text.startswith("**prompt**") and "**continuation**" in text
    else:
        text = text_of(events, "samples/examples")
        if family == "learn_to_execute":
            assert text.count("target:") == 3 and text.count("model:") == 3 and "print(" in text
        else:
            assert text.count("farthest from v") == 3 and text.count("answer v") == 3

    # The HPARAMS tab: the run's hyperparameters with its size and core (and the core's arguments), the hp/ metrics
    # named, and none of Lightning's own bookkeeping.
    hparams = events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
    assert f"hp/best_val_{metric}".encode() in hparams["_hparams_/experiment"]
    session = hparams["_hparams_/session_start_info"]
    assert (
        b"RelationalMemory" in session and b"core/init_args/mem_slots" in session and b"parameters" in session
    )
    assert b"_instantiator" not in session


def test_lstm_runs_show_its_three_gates_and_no_attention(tmp_path):
    events = fit(tmp_path, "nth_farthest/lstm_cpu.yaml", *FAMILIES["nth_farthest"][1])
    tags = events.Tags()
    assert {"gates/input", "gates/forget", "gates/output"} <= set(tags["histograms"])
    assert "gates/output_mean" in tags["scalars"]
    assert tags["images"] == []


def test_every_part_can_be_switched_off(tmp_path):
    off = ["grad_norm", "throughput", "hparams", "attention", "gates", "text"]
    events = fit(
        tmp_path,
        "nth_farthest/rmc_cpu.yaml",
        *FAMILIES["nth_farthest"][1],
        *[f"--insight.{o}=false" for o in off],
    )
    tags = events.Tags()
    assert tags["images"] == [] and tags["histograms"] == [] and tags["tensors"] == []
    assert not [t for t in tags["scalars"] if t.startswith(("hp/", "gates/", "train/grad", "train/examples"))]
    assert "val/acc" in tags["scalars"]


@pytest.mark.parametrize(
    "setting,message",
    [
        ("attention_steps=0", "Insight: attention_steps must be a positive integer, got attention_steps=0"),
        ("example=32", "Insight: example must be an integer from 0 to probe_examples - 1 = 31"),
        ("text_examples=40", "Insight: text_examples (40) must be at most probe_examples (32)"),
    ],
)
def test_a_bad_insight_setting_is_one_clear_error(setting, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            ["fit", "--config", str(EXPERIMENTS / "nth_farthest" / "rmc_cpu.yaml"), f"--insight.{setting}"]
        )
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("gate_style", ["unit", "memory"])
def test_rmc_trace_matches_forward_and_its_attention_rows_sum_to_one(gate_style):
    torch.manual_seed(0)
    core = RelationalMemory(
        5, mem_slots=3, head_size=4, num_heads=2, num_blocks=2, gate_style=gate_style
    ).eval()
    xs, lengths = torch.randn(4, 6, 5), torch.tensor([6, 3, 1, 5])
    outputs, _ = core(xs, lengths=lengths)
    trace = core.trace(xs, lengths=lengths)
    torch.testing.assert_close(trace.outputs, outputs)
    assert trace.attention.shape == (4, 6, 2, 2, 3, 4)  # [B, T, blocks, H, N, N + 1 input row]
    torch.testing.assert_close(trace.attention.sum(-1), torch.ones(4, 6, 2, 2, 3))
    gate = (4, 6, 3, 8) if gate_style == "unit" else (4, 6, 3, 1)
    assert {name: tuple(g.shape) for name, g in trace.gates.items()} == {"input": gate, "forget": gate}
    assert all(((g > 0) & (g < 1)).all() for g in trace.gates.values())


def test_lstm_trace_recomputes_the_gates_that_give_nn_lstms_outputs():
    torch.manual_seed(0)
    core = LSTMCore(5, 7, num_layers=2).eval()
    xs, lengths = torch.randn(4, 6, 5), torch.tensor([6, 3, 1, 5])
    outputs, _ = core(xs, lengths=lengths)
    trace = core.trace(xs, lengths=lengths)
    torch.testing.assert_close(trace.outputs, outputs)  # the recomputed gates drive the same cell states
    assert set(trace.gates) == {"input", "forget", "output"}
    assert all(tuple(g.shape) == (4, 6, 2, 7) and ((g > 0) & (g < 1)).all() for g in trace.gates.values())
    assert trace.attention is None


def test_attention_image_has_the_documented_size():
    attention = torch.softmax(torch.randn(9, 2, 3, 4, 5), dim=-1)  # [T, blocks, H, N, N + 1]
    assert torch.allclose(attention.sum(-1), torch.ones(9, 2, 3, 4))
    steps = chosen_steps(9, 4)
    assert steps == [0, 3, 5, 8]
    image = attention_image(attention, steps, [f"w{t}" for t in range(9)], [])
    layout = AttentionLayout(rows=6, columns=4, slots=4, keys=5)
    width, height = layout.size
    assert tuple(image.shape) == (height, width, 3) and image.dtype == torch.uint8
    # Six rows of four slots fit a TensorBoard card's 200 pixels of height at 4 pixels per weight (its width
    # would allow 17): the card shows the image at its own size, at least 240 wide for the labels.
    assert layout.scale == 4 and layout.grid_width == 30 + 4 * (5 * 4 + 6) + 22
    assert (width, height) == (240, 32 + 6 * (4 * 4 + 6) + 14 + 6) and height <= 200
    # The first cell's top-left entry has the colour of its weight.
    assert torch.equal(image[32 + 1, 30 + 1], colorize(attention[0, 0, 0, 0, 0]))


def test_attention_image_fits_a_card_with_a_caption():
    """A long caption (a program of Learning to Execute, a sentence) wraps to the grid's width, and the cells shrink
    so that the image still fits TensorBoard's card instead of being scaled down out of reading."""
    attention = torch.softmax(torch.randn(40, 1, 2, 2, 3), dim=-1)
    caption = ["input:  " + " ".join(f"word{i}" for i in range(40)), "target: short"]
    image = attention_image(attention, chosen_steps(40, 4), [""] * 40, caption, title="a title " * 12)
    assert image.shape[1] <= 440 and image.shape[0] <= 200
    bare = attention_image(attention, chosen_steps(40, 4), [""] * 40, [], title="t")
    assert (
        bare.shape[0] <= 200 and bare.shape[1] > image.shape[1]
    )  # the caption's lines took room from the cells


def test_sorting_describes_its_examples():
    data = SortingDataModule(length=4, batch_size=2, val_size=2)
    batch = data.make(2, torch.Generator().manual_seed(0))
    described = data.describe_example(batch, 0, batch.targets[0])
    numbers = [int(v) for v in described.steps]
    assert described.lines[0] == "input:  " + " ".join(map(str, numbers))
    assert described.lines[1] == "target: " + " ".join(map(str, sorted(numbers)))
    assert described.lines[2] == described.lines[1].replace("target:", "model: ")


def test_learn_to_execute_describes_its_programs():
    from datamodules import LearnToExecuteDataModule
    from datamodules.learn_to_execute import encode_batch

    data = LearnToExecuteDataModule()
    batch = encode_batch([("print((12+34))", "46")])
    right = data.describe_example(batch, 0, torch.tensor([6, 8, 1]))  # ids of "4", "6", <eos>
    assert right.steps == list("print((12+34))") + ["$"]  # a label per step the core reads, <eos> as $
    assert right.lines == ["input:  print((12+34))$", "target: 46", "model:  46"]
    assert data.describe_example(batch, 0, torch.tensor([1, 1, 1])).lines[2] == "model:  (<eos> at once)"


def test_the_text_sample_comes_from_the_probe_alone():
    """Inspection asks the probe (issue 21): a continuation needs only the probe's tokens, words and generate,
    whatever the model or the batch look like."""
    from rrn_lightning.insight import Insight
    from rrn_lightning.tasks import Probe

    calls = []

    def generate(prompt, count, generator):
        calls.append((prompt, count))
        return [2] * count

    tokens = torch.tensor([[0, 1, 2], [2, 1, 0]])
    probe = Probe(
        torch.zeros(2, 3, 4), None, tokens, None, tokens=tokens, words=["a", "b", "c"], generate=generate
    )
    tag, text = Insight(continuation_words=2)._text(None, None, probe, 1)
    assert tag == "samples/continuation" and calls == [([2, 1, 0], 2)]
    assert text == "**prompt** c b a\n\n**continuation** (sampled, seed 0) c c"
    without = probe._replace(generate=None)
    assert Insight()._text(None, None, without, 0) == ("samples/examples", "")
