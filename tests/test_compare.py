"""``rrn compare`` over two tiny real runs (an RMC, tested, and an LSTM, not) and over runs written by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.cli import LightningArgumentParser
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from rrn_lightning import compare
from rrn_lightning.cli import cli_main

EXPERIMENTS = Path(__file__).parents[1] / "experiments" / "nth_farthest"
TINY = [
    "--trainer.max_epochs=2",
    "--data.init_args.batches_per_epoch=3",
    "--data.init_args.batch_size=16",
    "--data.init_args.val_size=64",
    "--data.init_args.test_size=64",
    "--trainer.enable_progress_bar=false",
]
RMC, LSTM = "nth_farthest_rmc_cpu/version_0", "nth_farthest_lstm_cpu/version_0"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A folder holding runs/ with an RMC run (fitted, then tested: two event files) and an LSTM run (fitted)."""
    home = tmp_path_factory.mktemp("compare")
    for config in ("rmc_cpu.yaml", "lstm_cpu.yaml"):
        common = ["--config", str(EXPERIMENTS / config), f"--trainer.default_root_dir={home / 'runs'}", *TINY]
        cli_main(["fit", *common])
        if config == "rmc_cpu.yaml":
            cli_main(["test", *common, "--ckpt_path=last"])
    return home


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run folder: tag -> [(step, value), ...]."""
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def train_val_span(events: Path) -> float | None:
    """The last minus the first wall time of one event file's train/ and val/ scalars; None without any."""
    accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
    accumulator.Reload()
    tags = [tag for tag in accumulator.Tags()["scalars"] if tag.startswith(("train/", "val/"))]
    times = [e.wall_time for tag in tags for e in accumulator.Scalars(tag)]
    return max(times) - min(times) if times else None


def table(text: str) -> dict[str, dict[str, str]]:
    """A printed Markdown table -> {run: {column: cell}}, checking its header on the way."""
    lines = text.strip().splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == list(compare.COLUMNS)
    rows = [
        dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]
    ]
    return {row["run"]: row for row in rows}


def test_table_has_a_row_per_run_with_its_best_and_test_metric(home, monkeypatch, capsys):
    monkeypatch.chdir(home)
    assert compare.main(["runs"]) == 0
    rows = table(capsys.readouterr().out)
    assert list(rows) == [f"runs/{LSTM}", f"runs/{RMC}"]  # sorted by path
    for name, core in ((RMC, "RelationalMemory"), (LSTM, "LSTMCore")):
        run, row = home / "runs" / name, rows[f"runs/{name}"]
        logged = scalars(run)
        # The configs monitor val/acc, higher is better; the earliest of equal bests.
        best_step, best = max(logged["val/acc"], key=lambda sv: (sv[1], -sv[0]))
        assert row["best validation metric"] == f"val/acc {best:.4f} (step {best_step})"
        assert row["core"] == core
        parameters = yaml.safe_load((run / "hparams.yaml").read_text()).get("parameters")
        assert row["parameters"] == ("-" if parameters is None else f"{parameters:,}")
        assert row["steps"] == str(max(step for points in logged.values() for step, _ in points))
        # Wall time: the spans of the event files holding train/ or val/ scalars, each file read alone.
        spans = [span for events in run.glob("events.out.tfevents.*") if (span := train_val_span(events))]
        # The RMC run's second file, of `rrn test`, holds only test/ scalars: it adds nothing.
        assert len(spans) == 1
        assert row["wall time"] == compare.format_duration(spans[0])
    # Only the RMC run was tested; its test/acc comes from the second event file that `rrn test` wrote.
    assert len(list((home / "runs" / RMC).glob("events.out.tfevents.*"))) == 2
    test_acc = scalars(home / "runs" / RMC)["test/acc"][-1][1]
    assert rows[f"runs/{RMC}"]["test metric"] == f"test/acc {test_acc:.4f}"
    assert rows[f"runs/{LSTM}"]["test metric"] == "-"


def test_run_folders_given_one_by_one_keep_their_order_and_appear_once(home, capsys):
    rmc, lstm = str(home / "runs" / RMC), str(home / "runs" / LSTM)
    assert compare.main([rmc, lstm, rmc]) == 0
    assert list(table(capsys.readouterr().out)) == [rmc, lstm]  # not below the current directory: as given


def test_plot_is_a_png_of_the_documented_size_with_every_run_drawn(home, monkeypatch, capsys):
    monkeypatch.chdir(home)
    assert compare.main(["runs", "--plot", "plots/compare.png"]) == 0
    assert capsys.readouterr().err.strip().endswith("wrote plots/compare.png")
    with Image.open(home / "plots" / "compare.png") as image:
        assert image.format == "PNG"
        assert image.size == compare.plot_size(metrics=1, runs=2)
        colours = {colour for _, colour in image.convert("RGB").getcolors(maxcolors=1 << 20)}
    assert len(colours) > 10  # text, grid and curves, not a blank page
    assert {compare.run_colour(0), compare.run_colour(1)} <= colours  # both runs' curves


def write_run(
    folder: Path, files: list[list[tuple[str, int, float, float]]], monitor: str | None = None
) -> None:
    """A run folder by hand: one event file per list of (tag, step, value, wall time); a later file resumes the
    run at its first step, as `rrn fit --ckpt_path last` does (TensorBoard's purge_step), unless it holds only
    test/ scalars, as `rrn test` writes."""
    for index, events in enumerate(files):
        resumes = index and not all(tag.startswith("test/") for tag, *_ in events)
        writer = SummaryWriter(str(folder), purge_step=events[0][1] if resumes else None)
        for tag, step, value, wall_time in events:
            writer.add_scalar(tag, value, step, walltime=wall_time)
        writer.close()
        # Named in order: TensorBoard reads a folder's event files by name.
        (new,) = (
            f for f in folder.glob("events.out.tfevents.*") if not f.name.startswith("events.out.tfevents.0")
        )
        new.rename(folder / f"events.out.tfevents.{index:010d}.host")
    if monitor is not None:
        config = {"checkpoint": {"monitor": monitor, "mode": "min"}, "model": {"init_args": {"core": None}}}
        (folder / "config.yaml").write_text(yaml.safe_dump(config))


def test_resumed_runs_and_runs_without_a_monitor(tmp_path, capsys):
    # Interrupted after step 30, resumed an hour later from step 30's checkpoint: the first file's step 30 (the
    # lowest loss) is hidden; then tested, later still.
    lm_dir = tmp_path / "lm" / "version_0"
    first = [("train/loss", 1, 0.9, 995.0), ("val/loss", 10, 0.5, 1000.0), ("val/loss", 20, 0.3, 1010.0)]
    first.append(("val/loss", 30, 0.1, 1020.0))
    resumed = [("val/loss", 30, 0.4, 4600.0), ("train/loss", 35, 0.3, 4700.0), ("val/loss", 40, 0.2, 4725.0)]
    write_run(lm_dir, [first, resumed, [("test/loss", 40, 0.25, 9000.0)]])
    write_run(
        tmp_path / "ppl" / "version_0",
        [[("val/ppl", 5, math.nan, 10.0), ("val/ppl", 7, 90.0, 20.0)]],
        "val/ppl",
    )
    assert compare.main([str(tmp_path), "--plot", str(tmp_path / "compare.png")]) == 0
    rows = table(capsys.readouterr().out)
    lm, ppl = rows[str(tmp_path / "lm" / "version_0")], rows[str(tmp_path / "ppl" / "version_0")]
    # No monitor: val/loss, lower is better.
    assert lm["best validation metric"] == "val/loss 0.2000 (step 40)"
    # Wall time: the files' spans, 25 s and 125 s; the hour between them and the test file count nothing.
    assert (lm["steps"], lm["wall time"], lm["core"], lm["parameters"]) == ("40", "0:02:30", "-", "-")
    assert lm["test metric"] == "test/loss 0.2500"
    # The plot's clock: the earlier files' spans plus the time since the point's own file began (995 s, 4600 s).
    lm_run = compare.read_run(lm_dir)
    assert [(p.step, lm_run.elapsed(p.wall_time)) for p in lm_run.scalars["val/loss"]] == [
        (10, 5.0),
        (20, 15.0),
        (30, 25.0),
        (40, 150.0),
    ]
    # NaN or not, the time counts.
    assert compare.read_run(tmp_path / "ppl" / "version_0").wall_seconds == 10.0
    assert ppl["best validation metric"] == "val/ppl 90.0000 (step 7)"  # NaN never wins
    with Image.open(tmp_path / "compare.png") as image:
        assert image.size == compare.plot_size(metrics=2, runs=2)  # a row of panels per metric


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("missing", r"RUN_DIR '{}' does not exist; give a run folder such as runs/<name>/version_0"),
        ("empty", r"RUN_DIR '{}' holds no TensorBoard event files"),
        ("empty/notes.txt", r"RUN_DIR '{}' is a file, not a folder"),
    ],
)
def test_bad_run_dirs_end_in_one_line_naming_them(tmp_path, capsys, given, message):
    (tmp_path / "empty" / "version_0").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no events here")
    path = str(tmp_path / given)
    assert compare.main([path]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("rrn compare: error: " + message.format(path))
    assert captured.err.count("\n") == 1


def test_plot_must_be_a_png_file(tmp_path, capsys):
    assert compare.main([str(tmp_path), "--plot", "runs.jpg"]) == 2
    assert "--plot 'runs.jpg' must name a .png file" in capsys.readouterr().err


def test_options_also_build_on_the_rrn_parser():
    # cli.py lists `compare` in `rrn --help` through a LightningArgumentParser (jsonargparse), as for generate.
    parser = LightningArgumentParser(description=compare.DESCRIPTION)
    compare.add_arguments(parser)
    args = parser.parse_args(["runs/a", "runs/b", "--plot", "out.png"])
    assert (args.run_dirs, args.plot) == (["runs/a", "runs/b"], "out.png")
