"""``rrn compare`` over two tiny real runs (an RMC, tested, and an LSTM, not) and over runs written by hand."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.cli import LightningArgumentParser
from PIL import Image, ImageDraw
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
        assert row["best validation metric"] == f"val/acc {best:.4f} (step {best_step + 1})"
        assert row["core"] == core
        parameters = yaml.safe_load((run / "hparams.yaml").read_text()).get("parameters")
        assert row["parameters"] == ("-" if parameters is None else f"{parameters:,}")
        # Steps as checkpoints count them: the largest logged step plus one.
        assert row["steps"] == str(max(step for points in logged.values() for step, _ in points) + 1)
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
    assert lm["best validation metric"] == "val/loss 0.2000 (step 41)"
    # Wall time: the files' spans, 25 s and 125 s; the hour between them and the test file count nothing.
    assert (lm["steps"], lm["wall time"], lm["core"], lm["parameters"]) == ("41", "0:02:30", "-", "-")
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
    assert ppl["best validation metric"] == "val/ppl 90.0000 (step 8)"  # NaN never wins
    with Image.open(tmp_path / "compare.png") as image:
        assert image.size == compare.plot_size(metrics=2, runs=2)  # a row of panels per metric


def test_a_test_older_than_the_training_is_marked_stale(tmp_path, capsys):
    """A run tested, then trained on (resumed with more steps): its test metric is no longer the run's."""
    before = [("train/loss", 9, 0.9, 100.0), ("val/loss", 9, 0.5, 110.0)]
    tested = [("test/loss", 0, 0.45, 200.0)]  # rrn test logs at step 0
    later = [("train/loss", 19, 0.3, 300.0), ("val/loss", 19, 0.2, 310.0)]
    write_run(tmp_path / "a" / "stale" / "version_0", [before, tested, later])
    write_run(tmp_path / "b" / "fresh" / "version_0", [before, later, [("test/loss", 0, 0.25, 400.0)]])
    assert compare.main([str(tmp_path)]) == 0
    rows = table(capsys.readouterr().out)
    stale, fresh = (
        rows[str(tmp_path / "a" / "stale" / "version_0")],
        rows[str(tmp_path / "b" / "fresh" / "version_0")],
    )
    assert stale["test metric"] == "test/loss 0.4500 (stale: the run trained on after this test)"
    assert fresh["test metric"] == "test/loss 0.2500"
    assert stale["steps"] == fresh["steps"] == "20"
    assert compare.stale_note([True, False, False]) == " (stale in 1 of 3 runs: trained on after the test)"


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


def test_identical_curves_stay_distinguishable(tmp_path):
    """Two runs with the same validation curve (issue 20: the second hid the first): the first is drawn wider, so
    its colour shows around the second's, and each has its own markers, placed apart."""
    for name in ("a", "b"):
        write_run(
            tmp_path / name, [[("val/loss", step, 1 / (step + 1), 1000.0 + step) for step in range(120)]]
        )
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "b"), "--plot", str(tmp_path / "plot.png")]) == 0
    with Image.open(tmp_path / "plot.png") as image:
        panels = image.convert("RGB").crop((0, 0, image.width, compare.PANEL_HEIGHT))  # no legend
        counts = {colour: count for count, colour in panels.getcolors(maxcolors=1 << 20)}
    first, second = (counts.get(compare.run_colour(i), 0) for i in (0, 1))
    assert first > 1000 and second > 1000, (first, second)
    assert compare.curve_style(0, 2) != compare.curve_style(1, 2)


def test_runs_compared_at_equal_steps_and_equal_wall_time(tmp_path, capsys):
    """--at-step and --at-minutes: each run's validation metrics as they stood then (a fast run validates more
    often in the same minutes; a slow one takes longer for the same steps)."""
    fast = [("val/loss", step, 1.0 / (step + 1), 1000.0 + step) for step in (99, 199, 299, 399)]  # 1 s a step
    slow = [
        ("val/loss", step, 2.0 / (step + 1), 1000.0 + 4 * step) for step in (99, 199, 299, 399)
    ]  # 4 s a step
    write_run(tmp_path / "fast", [fast])
    write_run(tmp_path / "slow", [slow])
    args = [str(tmp_path / "fast"), str(tmp_path / "slow"), "--at-step", "250", "--at-minutes", "5"]
    assert compare.main(args) == 0
    out = capsys.readouterr().out
    at_step, at_time = out.split("At step 250:")[1].split("After 5 minutes of training:")
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in at_step.splitlines()
        if line.startswith("| /")
    }
    # The last validation at or before step 250 is the one logged at step 199 (step 200 as checkpoints count).
    assert rows[str(tmp_path / "fast")] == ["1", "200", f"{1 / 200:.4f}"]
    assert rows[str(tmp_path / "slow")] == ["1", "200", f"{2 / 200:.4f}"]
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in at_time.splitlines()
        if line.startswith("| /")
    }
    # 300 s of training (from each run's first logged value): the fast run had validated at step 399, the slow
    # one at step 99 only (its next validation came 400 s later).
    assert rows[str(tmp_path / "fast")] == ["1", "400", f"{1 / 400:.4f}"]
    assert rows[str(tmp_path / "slow")] == ["1", "100", f"{2 / 100:.4f}"]
    assert compare.main([str(tmp_path / "fast"), "--at-step", "0"]) == 2
    assert "--at-step must be positive, got 0" in capsys.readouterr().err


def test_plot_must_be_a_png_file(tmp_path, capsys):
    assert compare.main([str(tmp_path), "--plot", "runs.jpg"]) == 2
    assert "--plot 'runs.jpg' must name a .png file" in capsys.readouterr().err


def test_options_also_build_on_the_rrn_parser():
    # cli.py lists `compare` in `rrn --help` through a LightningArgumentParser (jsonargparse), as for generate.
    parser = LightningArgumentParser(description=compare.DESCRIPTION)
    compare.add_arguments(parser)
    args = parser.parse_args(["runs/a", "runs/b", "--plot", "out.png"])
    assert (args.run_dirs, args.plot) == (["runs/a", "runs/b"], "out.png")


# ---------------------------------------------------------------------------------------------- seeds
def rrn_config(name: str, seed: int, lr: float) -> dict:
    """A config.yaml as `rrn fit --seed_everything SEED --run_name NAME` saves it, cut to a few of its keys."""
    logger = {"class_path": "rrn_lightning.runs.RunLogger", "init_args": {"save_dir": "runs", "name": name}}
    core = {"class_path": "rrn_lightning.RelationalMemory", "init_args": {"mem_slots": 4}}
    optimizer = {"class_path": "torch.optim.Adam", "init_args": {"lr": lr}}
    return {
        "seed_everything": seed,
        "trainer": {"default_root_dir": "runs", "max_epochs": 3, "logger": logger},
        "model": {
            "class_path": "rrn_lightning.SequenceClassifier",
            "init_args": {"core": core, "optimizer": optimizer},
        },
        "data": {"class_path": "datamodules.NthFarthestDataModule", "init_args": {"train_seed": 0}},
        "run_name": name,
        "checkpoint": {"dirpath": None, "monitor": "val/acc", "mode": "max"},
        "ckpt_path": None,
    }


# (lr, seed) -> validation accuracies at steps 10, 20, 30 (..), and the test accuracy of a tested run.
SEEDED = {
    (0.001, 0): ([0.50, 0.62, 0.70], 0.69),
    (0.001, 1): ([0.55, 0.66, 0.64], 0.65),
    (0.001, 2): ([0.45, 0.60, 0.74, 0.72], 0.73),  # one validation more than the others, at step 40
    (0.01, 0): ([0.20, 0.30, 0.35], 0.34),
    (0.01, 1): ([0.25, 0.28, 0.33], None),
}
SEEDS, OTHER_LR = "runs/rmc_seed*/version_0", "runs/rmc_lr0.01_seed*/version_0"


def seeded_run(lr: float, seed: int) -> str:
    return f"runs/rmc_seed{seed}/version_0" if lr == 0.001 else f"runs/rmc_lr0.01_seed{seed}/version_0"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Path:
    """A folder holding runs/: three seeds of one config, two of a config with another lr (one tested, one not),
    and two runs without a config.yaml."""
    home = tmp_path_factory.mktemp("seeds")
    for (lr, seed), (accuracies, test_acc) in SEEDED.items():
        folder = home / seeded_run(lr, seed)
        # Seed s takes 2 + s seconds a step.
        fit = [("train/loss", 1, 1.0, 1000.0)]
        fit += [
            ("val/acc", 10 * (i + 1), acc, 1000.0 + 10 * (i + 1) * (2 + seed))
            for i, acc in enumerate(accuracies)
        ]
        write_run(folder, [fit] + ([[("test/acc", 30, test_acc, 9000.0)]] if test_acc is not None else []))
        config = rrn_config(folder.parent.name, seed, lr)
        if seed == 2:  # resumed: `rrn fit --ckpt_path last` saved the checkpoint and the run's folder
            config["ckpt_path"] = str(folder / "checkpoints" / "last.ckpt")
            config["trainer"]["logger"]["init_args"].update(version=0, purge_step=31)
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        (folder / "hparams.yaml").write_text(yaml.safe_dump({"parameters": 1234}))
    for name in ("handmade_a", "handmade_b"):
        write_run(
            home / "runs" / name / "version_0", [[("val/loss", 5, 0.5, 10.0), ("val/loss", 9, 0.4, 20.0)]]
        )
    return home


def spread(values: list[float], digits: int) -> str:
    return (
        f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f} "
        f"({min(values):.{digits}f}-{max(values):.{digits}f})"
    )


def test_seeds_of_one_config_are_one_row_with_their_mean_and_spread(seeds, monkeypatch, capsys):
    monkeypatch.chdir(seeds)
    assert compare.main(["runs"]) == 0
    rows = table(capsys.readouterr().out)
    # Configs that differ in lr stay apart; runs without a config.yaml are each their own row.
    assert list(rows) == ["runs/handmade_a/version_0", "runs/handmade_b/version_0", OTHER_LR, SEEDS]
    row = rows[SEEDS]
    assert (row["core"], row["parameters"], row["n"]) == ("RelationalMemory", "1,234", "3")
    # The numbers, from the event files.
    runs = [seeds / seeded_run(0.001, seed) for seed in range(3)]
    logged = [scalars(run) for run in runs]
    best = [max(value for _, value in points["val/acc"]) for points in logged]
    assert row["best validation metric"] == f"val/acc {spread(best, 4)}"
    assert row["test metric"] == f"test/acc {spread([points['test/acc'][-1][1] for points in logged], 4)}"
    steps = [max(step for tag in points.values() for step, _ in tag) for points in logged]
    assert steps == [30, 30, 40]
    assert row["steps"] == spread([step + 1 for step in steps], 0)
    walls = [train_val_span(next(run.glob("events.out.tfevents.0*"))) for run in runs]
    assert walls == [60.0, 90.0, 160.0]
    mean, std = statistics.fmean(walls), statistics.stdev(walls)
    durations = [compare.format_duration(s) for s in (mean, std, min(walls), max(walls))]
    assert row["wall time"] == "{} ± {} ({}-{})".format(*durations)
    # Only one run of the other lr was tested; a value all runs share is shown once.
    other = rows[OTHER_LR]
    assert (other["n"], other["steps"], other["parameters"]) == ("2", "31", "1,234")
    assert (
        other["test metric"]
        == f"test/acc {scalars(seeds / seeded_run(0.01, 0))['test/acc'][-1][1]:.4f}, 1 of 2 runs"
    )
    # A run alone keeps its own row: its best with its step, n = 1.
    alone = rows["runs/handmade_a/version_0"]
    assert (alone["n"], alone["best validation metric"]) == ("1", "val/loss 0.4000 (step 10)")


def test_no_group_shows_every_run(seeds, monkeypatch, capsys):
    monkeypatch.chdir(seeds)
    assert compare.main(["runs", "--no-group"]) == 0
    rows = table(capsys.readouterr().out)
    expected = ["runs/handmade_a/version_0", "runs/handmade_b/version_0"]
    expected += [seeded_run(0.01, seed) for seed in range(2)] + [seeded_run(0.001, seed) for seed in range(3)]
    assert list(rows) == expected
    assert {row["n"] for row in rows.values()} == {"1"}
    best = scalars(seeds / seeded_run(0.001, 1))["val/acc"][1]
    assert (
        rows[seeded_run(0.001, 1)]["best validation metric"] == f"val/acc {best[1]:.4f} (step {best[0] + 1})"
    )


def test_group_curve_is_the_mean_at_the_steps_all_runs_logged(seeds):
    runs = [compare.read_run(seeds / seeded_run(0.001, seed)) for seed in range(3)]
    (group,) = compare.group_runs(runs)
    assert group.name == str(seeds / SEEDS)
    curve = compare.group_curve(group, "val/acc")
    assert [point.step for point in curve] == [10, 20, 30]  # not 40: only seed 2 logged it
    logged = [dict(scalars(run.path)["val/acc"]) for run in runs]  # step -> value, per run
    for point in curve:
        accuracies = [values[point.step] for values in logged]
        assert (point.low, point.high) == (min(accuracies), max(accuracies))
        assert point.mean == pytest.approx(statistics.fmean(accuracies))
        # Minutes of training: seed s at step k has trained k (2 + s) seconds.
        assert point.minutes == pytest.approx(statistics.fmean(point.step * (2 + s) for s in range(3)) / 60)


def band_tint(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """What a band of this run colour looks like over white."""
    swatch = Image.new("RGB", (1, 1), "white")
    ImageDraw.Draw(swatch, "RGBA").rectangle([0, 0, 0, 0], fill=(*colour, compare.BAND_ALPHA))
    return swatch.getpixel((0, 0))


@pytest.mark.parametrize("grouped", [True, False])
def test_plot_draws_a_group_as_its_mean_in_a_band(seeds, monkeypatch, capsys, grouped):
    monkeypatch.chdir(seeds)
    assert compare.main(["runs", "--plot", "seeds.png", *([] if grouped else ["--no-group"])]) == 0
    with Image.open(seeds / "seeds.png") as image:
        assert image.format == "PNG"
        assert image.size == compare.plot_size(metrics=2, runs=4 if grouped else 7)
        counts = {colour: count for count, colour in image.convert("RGB").getcolors(maxcolors=1 << 20)}
    # The two groups (of lr 0.01 and 0.001) are the third and fourth: their lines, and their bands, lighter.
    tints = [counts.get(band_tint(compare.run_colour(i)), 0) for i in (2, 3)]
    assert {compare.run_colour(2), compare.run_colour(3)} <= set(counts)
    if grouped:
        assert min(tints) > 2000
    else:
        assert tints == [0, 0]
