"""``rrn compare``: several runs side by side, as Markdown tables and, if asked, one plot.

    rrn compare runs/nth_farthest_rmc_cpu/version_0 runs/nth_farthest_lstm_cpu/version_0
    rrn compare runs/ --plot runs/compare.png --at-step 3000 --at-minutes 15

- reading runs: ``find_runs`` (run folders below the folders given), ``read_run`` (event files, config.yaml,
  hparams.yaml) -> ``Run``, whose wall time and clock are explained at ``Run.wall_seconds``;
- grouping seeds: ``experiment_key``, ``group_runs`` -> ``Group`` (how runs group: ``group_runs``);
- the tables: ``format_table`` (one row per group; the columns at ``COLUMNS``), ``at_table`` (equal steps,
  equal time);
- the plot: ``plot_groups``;
- ``main``: the command line.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import re
import statistics
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from .common import ConfigurationError
from .drawing import font as text_font
from .drawing import marker, place_text, vertical_text

DESCRIPTION = (
    "Compare runs: a Markdown table of their results, and optionally a plot of their validation curves."
)

EVENT_FILES = "events.out.tfevents.*"
# The scalars whose wall times make an event file's span: what fit and validate log (`rrn test` logs under test/).
TIMED_PREFIXES = ("train/", "val/")
STALE = " (stale: the run trained on after this test)"
# What a run whose checkpoints monitor nothing is judged by (ModelCheckpoint's default mode).
DEFAULT_METRIC, DEFAULT_MODE = "val/loss", "min"
MISSING = "-"
RUN_DIR_HINT = "give a run folder such as runs/<name>/version_0 or a folder above run folders"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rrn compare", description=DESCRIPTION)
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``rrn compare``; also shown by ``rrn --help``'s ``compare`` entry (``rrn_lightning.cli``)."""
    parser.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="a run folder (runs/<name>/version_N) or a folder above run folders, such as runs/",
    )
    parser.add_argument(
        "--plot",
        default=None,
        metavar="FILE.png",
        help="also draw the validation curves, against step and against wall time, into this PNG file",
    )
    parser.add_argument(
        "--at-step",
        type=int,
        default=None,
        metavar="N",
        help="also a table of every validation metric as it stood at step N (the last validation before it): "
        "runs compared at equal steps",
    )
    parser.add_argument(
        "--at-minutes",
        type=float,
        default=None,
        metavar="M",
        help="also the same table after M minutes of training: runs compared at equal wall time",
    )
    parser.add_argument(
        "--no-group",
        action="store_true",
        help="one row and one curve per run, instead of one per group of runs that differ only in their seed",
    )


# ---------------------------------------------------------------------------------------------- reading runs
class Point(NamedTuple):
    """One logged value of a scalar."""

    step: int
    value: float
    wall_time: float  # seconds since the Unix epoch


class Span(NamedTuple):
    """The first and last wall time of one event file's train/ and val/ scalars."""

    start: float
    end: float


@dataclass
class Run:
    """What ``rrn compare`` reads from one run folder."""

    path: Path
    name: str  # as shown: relative to the current directory, else as given
    scalars: dict[
        str, list[Point]
    ]  # tag -> points, in the order they were logged (TensorBoard's purged series)
    spans: list[Span]  # one per event file holding train/ or val/ scalars, in order of start
    metric: str = DEFAULT_METRIC  # the validation tag the run is judged by
    mode: str = DEFAULT_MODE  # "max" or "min"
    core: str | None = None
    parameters: int | None = None
    experiment: str | None = None  # what its seeds share (``experiment_key``); None without a config.yaml

    def _all_points(self) -> Iterable[Point]:
        return (point for points in self.scalars.values() for point in points)

    @property
    def wall_seconds(self) -> float | None:
        """Seconds of training: the sum of the event files' spans; None where no file holds train/ or val/ scalars.

        Wall time leaves out the idle gaps between a run's processes (an interrupted run and its resumption, a
        fit and its `rrn test`): it is the sum, over the run's event files, of each file's span, the last
        minus the first wall time of that file's ``train/`` and ``val/`` scalars. A file holding no such
        scalars (the ``test/`` file of `rrn test`) spans nothing. The wall-time axis of the plot runs on the
        same clock: a point sits at the spans of the earlier files (in time) plus its time since its own
        file's first ``train/`` or ``val/`` scalar, so a run's last such scalar sits at its wall time.

        Spans are taken from each file as written, read one file at a time, not from the series that
        TensorBoard shows for the whole folder. When a run resumes from a checkpoint, its new file restarts at
        the checkpoint's step and TensorBoard hides whatever the interrupted process logged at or after that
        step (its purge), so that no step appears twice; the values (table and plot) are that purged series.
        But the hidden stretch was spent training all the same (and redone after the resume), and a span cut
        at the last value TensorBoard keeps would also drop the time between that value and the checkpoint; so
        it counts, and on the plot it shows as the stretch between the interrupted file's last shown point and
        the resumed file's first.
        """
        return sum(span.end - span.start for span in self.spans) if self.spans else None

    def elapsed(self, wall_time: float) -> float | None:
        """Seconds of training at ``wall_time`` (a point's): the spans of the files before its own, plus its time
        since its own file's start. Its file is the last to start at or before it (a run's files follow one another);
        None where no file holds train/ or val/ scalars."""
        before = 0.0
        for index, span in enumerate(self.spans):
            if index + 1 == len(self.spans) or wall_time < self.spans[index + 1].start:
                return before + wall_time - span.start
            before += span.end - span.start
        return None

    @property
    def steps(self) -> int | None:
        """Optimizer steps taken, as checkpoints count them (``step=300``): Lightning logs what follows step k at
        step k - 1, so this is the largest logged step plus one."""
        last = max((p.step for p in self._all_points()), default=None)
        return None if last is None else last + 1

    @property
    def best(self) -> Point | None:
        return best_point(self.scalars.get(self.metric, []), self.mode)

    @property
    def test_metric(self) -> str | None:
        """The test tag of the validation metric: val/acc -> test/acc; None for a metric not under val/."""
        return "test/" + self.metric.removeprefix("val/") if self.metric.startswith("val/") else None

    @property
    def test(self) -> Point | None:
        """The latest test value (a run tested twice keeps its last result)."""
        points = self.scalars.get(self.test_metric or "", [])
        return points[-1] if points else None

    @property
    def test_is_stale(self) -> bool:
        """Whether the run trained on after its latest test: a train/ or val/ value was written after it."""
        test = self.test
        trained = (
            p.wall_time
            for tag, points in self.scalars.items()
            if tag.startswith(TIMED_PREFIXES)
            for p in points
        )
        return test is not None and max(trained, default=-math.inf) > test.wall_time


def best_point(points: Sequence[Point], mode: str) -> Point | None:
    """The best point by ``mode`` ("max" or "min"), the earliest among equals; NaNs never win, as in ModelCheckpoint."""
    finite = [p for p in points if not math.isnan(p.value)]
    if not finite:
        return None
    sign = -1.0 if mode == "max" else 1.0
    return min(finite, key=lambda p: sign * p.value)  # min keeps the first of equal keys


def find_runs(run_dirs: Sequence[str]) -> list[tuple[Path, str]]:
    """(run folder, name to show) for every run folder that the RUN_DIR arguments stand for, each once."""
    found: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for given in run_dirs:
        folder = Path(given)
        if not folder.exists():
            raise ConfigurationError(f"RUN_DIR {given!r} does not exist; {RUN_DIR_HINT}.")
        if not folder.is_dir():
            raise ConfigurationError(f"RUN_DIR {given!r} is a file, not a folder; {RUN_DIR_HINT}.")
        if any(folder.glob(EVENT_FILES)):
            runs = [folder]
        else:  # a folder above run folders: every folder below it that holds event files itself
            runs = sorted({events.parent for events in folder.rglob(EVENT_FILES)}, key=_natural_key)
        if not runs:
            raise ConfigurationError(
                f"RUN_DIR {given!r} holds no TensorBoard event files ({EVENT_FILES}), nor does any folder below it; "
                f"{RUN_DIR_HINT}, written by `rrn fit`."
            )
        for run in runs:
            if run.resolve() not in seen:
                seen.add(run.resolve())
                found.append((run, _shown_name(run)))
    return found


def read_run(path: Path, name: str | None = None) -> Run:
    """A run folder's scalars, validation metric, core and parameter count; what it does not record stays None."""
    config, hparams = _read_yaml(path / "config.yaml"), _read_yaml(path / "hparams.yaml")
    checkpoint = config.get("checkpoint") or {}
    # What the run's TensorBoard reports as best (rrn_lightning.insight records it), else what its checkpoints
    # monitor, else the default.
    if hparams.get("monitor"):
        metric, mode = hparams["monitor"], hparams.get("monitor_mode")
    elif isinstance(checkpoint, dict) and checkpoint.get("monitor"):
        metric, mode = checkpoint["monitor"], checkpoint.get("mode")
    else:
        metric, mode = DEFAULT_METRIC, DEFAULT_MODE
    metric, mode = str(metric), "max" if mode == "max" else "min"
    parameters = hparams.get("parameters")
    return Run(
        path=path,
        name=name or str(path),
        scalars=read_scalars(path),
        spans=read_spans(path),
        metric=metric,
        mode=mode,
        core=_core_name(hparams, config),
        parameters=parameters if isinstance(parameters, int) and not isinstance(parameters, bool) else None,
        experiment=experiment_key(config),
    )


# Keys of config.yaml that name, place or resume a run rather than say what it trains: seeds of one experiment may
# differ in them (``--run_name seed$SEED``) and in SEED_KEY. The data modules' own seeds (train_seed, ...) are not
# among them: they choose the data, and runs on other data are another experiment.
SEED_KEY = "seed_everything"
RUN_KEYS = ("run_name", "ckpt_path", "allow_fresh_start", "trainer.default_root_dir", "checkpoint.dirpath")
LOGGER_RUN_KEYS = ("save_dir", "name", "version", "sub_dir", "purge_step")
"""Keys under the init_args of ``trainer.logger`` (or of each logger in a list) that name or place a run."""


def experiment_key(config: dict[str, Any]) -> str | None:
    """What runs of one experiment share: the config without SEED_KEY, RUN_KEYS and the loggers' LOGGER_RUN_KEYS,
    as canonical JSON (equal configs, equal keys); None for an empty config (a run without a readable config.yaml)."""
    if not config:
        return None
    config = copy.deepcopy(config)
    for dotted in (SEED_KEY, *RUN_KEYS):
        *parents, key = dotted.split(".")
        owner = _dig(config, *parents)
        if isinstance(owner, dict):
            owner.pop(key, None)
    loggers = _dig(config, "trainer", "logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init_args = _dig(logger, "init_args")
        for key in LOGGER_RUN_KEYS if isinstance(init_args, dict) else ():
            init_args.pop(key, None)
    return json.dumps(config, sort_keys=True, default=str)


def read_scalars(path: Path) -> dict[str, list[Point]]:
    """Every scalar of a run folder's event files, read together: a resumed run's later file hides what the
    interrupted run logged at or after the step it resumed from (TensorBoard's purge), so no step appears twice."""
    # Imported here: tensorboard takes a while to load, and `rrn --help` lists this command without reading runs.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0: keep every point
    with _quiet_tensorboard():
        accumulator.Reload()
    return {
        tag: [Point(e.step, e.value, e.wall_time) for e in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def read_spans(path: Path) -> list[Span]:
    """The span of each of a run folder's event files that holds train/ or val/ scalars, in order of start; each
    file is read alone, so nothing in it is hidden by a later file (see the module's docstring)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spans = []
    for events in path.glob(EVENT_FILES):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        with _quiet_tensorboard():
            accumulator.Reload()
        times = [
            event.wall_time
            for tag in accumulator.Tags()["scalars"]
            if tag.startswith(TIMED_PREFIXES)
            for event in accumulator.Scalars(tag)
        ]
        if times:
            spans.append(Span(min(times), max(times)))
    return sorted(spans)


@contextmanager
def _quiet_tensorboard() -> Iterator[None]:
    # TensorBoard warns of each purge as if something were wrong; for our resumed runs it is the expected case.
    tensorboard_logger = logging.getLogger("tensorboard")
    level = tensorboard_logger.level
    tensorboard_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        tensorboard_logger.setLevel(level)


class _LenientLoader(yaml.SafeLoader):
    """Safe YAML loading that reads a value of any tag (``!!python/...`` in some hparams.yaml files) as None."""


_LenientLoader.add_multi_constructor("", lambda loader, suffix, node: None)


def _read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file's top-level mapping; {} for a file that is missing or unreadable (its columns show "-")."""
    try:
        loaded = yaml.load(path.read_text(), Loader=_LenientLoader)  # safe: a SafeLoader subclass
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _core_name(hparams: dict[str, Any], config: dict[str, Any]) -> str | None:
    """The core's class name: hparams.yaml's ``core`` (a name, or the core's own class_path and init_args), else
    the core's class_path in config.yaml's model."""
    for core in (hparams.get("core"), _dig(config, "model", "init_args", "core")):
        class_path = core.get("class_path") if isinstance(core, dict) else core
        if isinstance(class_path, str) and class_path:
            return class_path.rsplit(".", 1)[-1]
    return None


def _dig(mapping: Any, *keys: str) -> Any:
    for key in keys:
        mapping = mapping.get(key) if isinstance(mapping, dict) else None
    return mapping


def _natural_key(path: Path) -> list[int | str]:
    # Digits as numbers: version_2 before version_10. re.split puts the digit runs at odd indices, so every
    # position compares like with like.
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", str(path)))]


def _shown_name(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:  # not below the current directory
        return str(path)


# ---------------------------------------------------------------------------------------------- groups of seeds
@dataclass
class Group:
    """Runs that differ only in their seed, in the order found (or one run alone): one row, one curve."""

    name: str  # as shown: the run's name, or the runs' names with the part where they differ replaced by *
    runs: list[Run]

    @property
    def metric(self) -> str:  # the same for every run: grouping asks for it
        return self.runs[0].metric

    @property
    def mode(self) -> str:
        return self.runs[0].mode


def group_runs(runs: Sequence[Run], group: bool = True) -> list[Group]:
    """The runs in groups of equal ``experiment`` and metric, in order of each group's first run; with ``group``
    false, or for runs without a config, each run is a group of its own.

    Each RUN_DIR is a run folder written by ``rrn fit`` (``runs/<name>/version_N``, the folder that holds the
    TensorBoard event files), or any folder above run folders, which stands for every run folder below it
    (sorted by path, version_2 before version_10). Runs that differ only in their seed are one group (``--no-group``:
    each run alone): runs whose ``config.yaml`` files are equal once ``seed_everything`` and the keys
    that name, place or resume a run (RUN_KEYS, LOGGER_RUN_KEYS) are left out, and that report the same
    metric; a run without a config.yaml is a group of its own.
    """
    groups: dict[Any, list[Run]] = {}
    for index, run in enumerate(runs):
        key = (run.experiment, run.metric, run.mode) if group and run.experiment is not None else index
        groups.setdefault(key, []).append(run)
    return [Group(group_name([run.name for run in members]), members) for members in groups.values()]


def group_name(names: Sequence[str]) -> str:
    """One name as is; several as their common start and end with ``*`` between them, neither cutting into a
    number (runs/seed2/version_0, runs/seed12/version_0 -> runs/seed*/version_0, not runs/seed*2/version_0)."""
    if len(names) == 1:
        return names[0]
    start = os.path.commonprefix(list(names))
    if any(name[len(start) :][:1].isdigit() for name in names):
        start = re.sub(r"\d+$", "", start)
    rests = [name[len(start) :] for name in names]
    end = os.path.commonprefix([rest[::-1] for rest in rests])[::-1]
    if any(rest[: len(rest) - len(end)][-1:].isdigit() for rest in rests):
        end = re.sub(r"^\d+", "", end)
    return f"{start}*{end}"


# ---------------------------------------------------------------------------------------------- the table
# The table has one row per group:
#
# - run: the run folder, relative to the current directory (else as given); for a group of several runs, their names
#   with the part where they differ replaced by ``*`` (runs/rmc_seed0/version_0, runs/rmc_seed1/version_0 ->
#   runs/rmc_seed*/version_0, a shell pattern that matches each of them);
# - core: the core's class (its ``class_path`` in ``hparams.yaml``, else in ``config.yaml``);
# - parameters: trainable parameters (``hparams.yaml``), "-" where the run does not record them;
# - n: the number of runs in the group;
# - steps: optimizer steps taken, as checkpoints count them (the largest logged step plus one: Lightning logs what
#   follows step k at step k - 1); wall time: the time spent training (h:mm:ss), see ``Run.wall_seconds``;
# - best validation metric: the best value of the metric the run reports as best in TensorBoard (``monitor`` and
#   ``monitor_mode`` in ``hparams.yaml``, written by ``rrn_lightning.insight``: the checkpoints' monitored metric, else
#   the task's own, e.g. val/ppl for a language model), else of ``checkpoint.monitor`` / ``checkpoint.mode`` in
#   ``config.yaml``, else val/loss (lower is better); with its step, counted as checkpoints count it;
# - test metric: the last value of that metric's ``test/`` counterpart (val/acc -> test/acc), logged by ``rrn test``;
#   marked stale where the run trained on after it (a train/ or val/ value written later).
#
# A group's steps, wall time, best and test metric are ``mean ± std (min-max)`` over its runs (std: the sample
# standard deviation, n-1), a value that all of them share shown once, the best without its step; ", k of n runs" where
# only k runs have a value.
#
# With ``--at-step N`` and ``--at-minutes M`` a second and third table give every validation metric as it stood at
# step N or after M minutes of training (the last validation before): runs compared at equal steps and equal time.
COLUMNS = ("run", "core", "parameters", "n", "steps", "wall time", "best validation metric", "test metric")
RIGHT_ALIGNED = {"parameters", "n", "steps", "wall time"}


def format_duration(seconds: float) -> str:
    """Seconds as h:mm:ss (hours grow past 24)."""
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def table_row(group: Group) -> list[str]:
    """A group's cells, in the order of COLUMNS: a run alone shows its own values, several runs their spread."""
    if len(group.runs) == 1:
        run = group.runs[0]
        best, test, wall_seconds = run.best, run.test, run.wall_seconds
        return [
            group.name,
            run.core or MISSING,
            MISSING if run.parameters is None else f"{run.parameters:,}",
            "1",
            MISSING if run.steps is None else str(run.steps),
            MISSING if wall_seconds is None else format_duration(wall_seconds),
            MISSING if best is None else f"{run.metric} {best.value:.4f} (step {best.step + 1})",
            MISSING
            if test is None
            else f"{run.test_metric} {test.value:.4f}{STALE if run.test_is_stale else ''}",
        ]
    runs, first = group.runs, group.runs[0]

    def metric(name: str | None, values: list[float | None]) -> str:
        summary = spread(values, "{:.4f}".format)
        return summary if summary == MISSING else f"{name} {summary}"

    return [
        group.name,
        first.core or MISSING,
        spread([run.parameters for run in runs], "{:,.0f}".format),
        str(len(runs)),
        spread([run.steps for run in runs], "{:.0f}".format),
        spread([run.wall_seconds for run in runs], format_duration),
        metric(first.metric, [best.value if (best := run.best) else None for run in runs]),
        metric(first.test_metric, [test.value if (test := run.test) else None for run in runs])
        + stale_note([run.test_is_stale for run in runs]),
    ]


def spread(values: Sequence[float | None], show: Callable[[float], str]) -> str:
    """``mean ± std (min-max)`` of the values that are not None (std: the sample standard deviation, n-1), each
    number written by ``show``; one value, or one that all share, is written once; ", k of n runs" where only k of
    the n values are given; "-" where none is."""
    given = [value for value in values if value is not None]
    if not given:
        return MISSING
    low, high = min(given), max(given)
    if low == high:
        text = show(low)
    else:
        mean, std = statistics.fmean(given), statistics.stdev(given)
        text = f"{show(mean)} ± {show(std)} ({show(low)}-{show(high)})"
    return text if len(given) == len(values) else f"{text}, {len(given)} of {len(values)} runs"


def stale_note(stale: Sequence[bool]) -> str:
    """What a group's test cell adds where some of its runs trained on after their test; "" where none did."""
    count = sum(stale)
    return f" (stale in {count} of {len(stale)} runs: trained on after the test)" if count else ""


def format_table(groups: Sequence[Group]) -> str:
    """The groups as a Markdown table, its columns padded to line up as plain text too."""
    return markdown_table(COLUMNS, [table_row(group) for group in groups], RIGHT_ALIGNED)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]], right_aligned=frozenset()) -> str:
    """Rows of cells as a Markdown table, padded to line up as plain text too."""
    rows = [[cell.replace("|", r"\|") for cell in row] for row in rows]
    # At least 3: a rule cell needs a dash besides its colon ("--:") for Markdown to read the table.
    widths = [max(3, len(column), *(len(row[i]) for row in rows)) for i, column in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.rjust(width) if column in right_aligned else cell.ljust(width)
            for column, cell, width in zip(columns, cells, widths, strict=True)
        )
        return "| " + " | ".join(padded) + " |"

    # "---:" right-aligns a column in rendered Markdown.
    rule = [
        ("-" * (w - 1) + ":") if c in right_aligned else "-" * w for c, w in zip(columns, widths, strict=True)
    ]
    return "\n".join([line(columns), line(rule), *(line(row) for row in rows)])


def value_at(run: Run, tag: str, step: int | None = None, minutes: float | None = None) -> Point | None:
    """The last value of ``tag`` logged at or before ``step`` (as checkpoints count steps: a value logged at step k
    belongs to step k + 1) or ``minutes`` of training (``Run.elapsed``); None where there is none yet."""
    points = run.scalars.get(tag, [])
    if step is not None:
        points = [p for p in points if p.step + 1 <= step]
    if minutes is not None:
        points = [
            p for p in points if (seconds := run.elapsed(p.wall_time)) is not None and seconds <= minutes * 60
        ]
    return points[-1] if points else None


def at_table(groups: Sequence[Group], step: int | None = None, minutes: float | None = None) -> str:
    """Each group's validation metrics (every ``val/`` tag its runs logged) as they stood at ``step`` or after
    ``minutes`` of training: the last validation before, with the step it was taken at; spread over seeds as in
    the main table."""
    tags = sorted(
        {tag for group in groups for run in group.runs for tag in run.scalars if tag.startswith("val/")}
    )
    at = f"step {step:,}" if step is not None else f"{minutes:g} min"
    columns = ["run", "n", f"validated by {at}", *tags]
    rows = []
    for group in groups:
        taken = [value_at(run, group.metric, step, minutes) for run in group.runs]
        row = [
            group.name,
            str(len(group.runs)),
            spread([p.step + 1 if p else None for p in taken], "{:.0f}".format),
        ]
        for tag in tags:
            points = [value_at(run, tag, step, minutes) for run in group.runs]
            row.append(spread([p.value if p else None for p in points], "{:.4f}".format))
        rows.append(row)
    return markdown_table(columns, rows, {"n", columns[2]})


# ---------------------------------------------------------------------------------------------- the plot
PANEL_WIDTH, PANEL_HEIGHT = 560, 380
"""Pixels of one panel; a row of the plot is two panels side by side (against step, against wall time)."""
LEGEND_ROW_HEIGHT, LEGEND_MARGIN = 20, 12
"""The legend under the panels: one row per run, and a margin above and below it."""
FONT_SIZE = 13
# Space around each panel's plotting area: tick labels and the y title on the left, the x title below.
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 78, 22, 34, 50
# Okabe and Ito's colour-blind-safe colours (without black, taken by the axes, and yellow, faint on white).
PALETTE = ((0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233))
AXIS, GRID, TEXT = (60, 60, 60), (225, 225, 225), (20, 20, 20)
MARKED_POINTS = 50  # series of at most this many points also get a dot at each point


BAND_ALPHA = 64
"""Opacity (of 255) of a group's band, in its run colour: the white, the grid and other bands show through it."""


def plot_size(metrics: int, runs: int) -> tuple[int, int]:
    """(width, height) in pixels of the plot of ``runs`` groups (rows of the table: a legend row each) monitoring
    ``metrics`` different metrics."""
    return 2 * PANEL_WIDTH, metrics * PANEL_HEIGHT + 2 * LEGEND_MARGIN + runs * LEGEND_ROW_HEIGHT


def run_colour(index: int) -> tuple[int, int, int]:
    """The colour of the index-th group in the plot (the palette repeats past six)."""
    return PALETTE[index % len(PALETTE)]


BandPoint = tuple[float, float, float]  # (x, lowest value, highest value)


MARKERS_PER_CURVE = 8  # a longer series gets about this many markers, placed differently for each group


class Curve(NamedTuple):
    """One line of a panel: its colour, its (x, y) points and, for a group of runs, its band of (x, low, high);
    ``index`` of ``count`` groups sets its marker shape and line width (``curve_style``)."""

    colour: tuple[int, int, int]
    points: list[tuple[float, float]]
    band: Sequence[BandPoint] = ()
    index: int = 0
    count: int = 1


def curve_style(index: int, count: int) -> tuple[str, int]:
    """(marker shape, line width) of the index-th of ``count`` groups. Curves are drawn in order, so an earlier
    group's line is wider and shows around a later one that lies on it; markers differ in shape (and, on long
    series, in where they sit), so two identical curves stay two."""
    return MARKER_SHAPES[index % len(MARKER_SHAPES)], 2 + 2 * min(count - 1 - index, 2)


MARKER_SHAPES = ("circle", "square", "triangle", "diamond", "down", "cross")


class GroupPoint(NamedTuple):
    """A group's values at one step that all its runs logged."""

    step: int
    minutes: float | None  # the mean of its runs' minutes of training there; None where one has no clock
    mean: float
    low: float
    high: float


def group_curve(group: Group, metric: str) -> list[GroupPoint]:
    """The mean, lowest and highest value of ``metric`` at each step that every run of the group which logged it
    logged too (no interpolation: seeds of one config log at the same steps); all three NaN where a value is NaN."""
    series = [(run, {p.step: p for p in run.scalars.get(metric, [])}) for run in group.runs]
    series = [(run, points) for run, points in series if points]
    shared = set.intersection(*(set(points) for _, points in series)) if series else set()
    curve = []
    for step in sorted(shared):
        values = [points[step].value for _, points in series]
        times = [run.elapsed(points[step].wall_time) for run, points in series]
        finite = all(math.isfinite(value) for value in values)
        mean, low, high = (statistics.fmean(values), min(values), max(values)) if finite else (math.nan,) * 3
        minutes = None if None in times else statistics.fmean(times) / 60
        curve.append(GroupPoint(step, minutes, mean, low, high))
    return curve


def plot_groups(groups: Sequence[Group], path: str | Path) -> Path:
    """Draw the groups' validation curves into the PNG file ``path`` (its folders are created) and return the path:
    a run alone as its points, several runs as their mean in a band from lowest to highest (``group_curve``).

    ``--plot FILE.png`` draws, with Pillow alone, each group's validation metric against step and against wall
    time (minutes of training, on the clock below), one colour per group; groups that monitor different
    metrics get one row of panels per metric. A group of several runs is drawn as its mean at the steps that
    all its runs logged (no interpolation), in a band of the run colour, lighter, from their lowest to their
    highest value; against wall time, at the mean of its runs' minutes of training at that step. ``plot_size``
    gives the image's size.
    """
    from PIL import Image, ImageDraw

    path = Path(path)
    metrics = list(dict.fromkeys(group.metric for group in groups))  # in order of first appearance
    image = Image.new("RGB", plot_size(len(metrics), len(groups)), "white")
    draw = ImageDraw.Draw(image)
    font = text_font(FONT_SIZE)
    curves = {}  # group index -> (against step, against wall time)
    labels = []
    for i, group in enumerate(groups):
        colour, (run, *others) = run_colour(i), group.runs
        if not others:
            points = run.scalars.get(group.metric, [])
            style = (i, len(groups))
            by_step = Curve(colour, [(p.step, p.value) for p in points], (), *style)
            curves[i] = by_step, Curve(colour, _minutes_of_training(run, points), (), *style)
            labels.append(group.name if points else f"{group.name} (no {group.metric} values)")
            continue
        curve = group_curve(group, group.metric)
        timed = [point for point in curve if point.minutes is not None]
        style = (i, len(groups))
        curves[i] = (
            Curve(
                colour, [(p.step, p.mean) for p in curve], [(p.step, p.low, p.high) for p in curve], *style
            ),
            Curve(
                colour,
                [(p.minutes, p.mean) for p in timed],
                [(p.minutes, p.low, p.high) for p in timed],
                *style,
            ),
        )
        runs = len(group.runs)
        labels.append(
            f"{group.name} (mean of {runs} runs, band from lowest to highest)"
            if curve
            else f"{group.name} (no {group.metric} step that all {runs} runs logged)"
        )
    for row, metric in enumerate(metrics):
        members = [i for i, group in enumerate(groups) if group.metric == metric]
        better = "higher" if groups[members[0]].mode == "max" else "lower"
        top = row * PANEL_HEIGHT
        title = f"{metric} against step ({better} is better)"
        _draw_panel(image, draw, font, (0, top), (title, "step", metric), [curves[i][0] for i in members])
        title = f"{metric} against wall time ({better} is better)"
        x_title = "wall time (minutes of training)"
        by_time = [curves[i][1] for i in members]
        _draw_panel(image, draw, font, (PANEL_WIDTH, top), (title, x_title, metric), by_time)

    # The legend: a stroke of each group's colour and width with its marker (on its band's colour for a group of
    # runs), then its name.
    top = len(metrics) * PANEL_HEIGHT + LEGEND_MARGIN
    blend = ImageDraw.Draw(image, "RGBA")
    for i, (group, label) in enumerate(zip(groups, labels, strict=True)):
        y = top + i * LEGEND_ROW_HEIGHT + LEGEND_ROW_HEIGHT // 2
        if len(group.runs) > 1:
            blend.rectangle([MARGIN_LEFT, y - 6, MARGIN_LEFT + 30, y + 6], fill=(*run_colour(i), BAND_ALPHA))
        shape, width = curve_style(i, len(groups))
        draw.line([(MARGIN_LEFT, y), (MARGIN_LEFT + 30, y)], fill=run_colour(i), width=width)
        marker(draw, (MARGIN_LEFT + 15, y), shape, run_colour(i))
        place_text(draw, font, (MARGIN_LEFT + 40, y), label, "lm")

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format="PNG")
    except OSError as error:
        raise ConfigurationError(f"--plot {str(path)!r} cannot be written: {error}.") from error
    return path


def _minutes_of_training(run: Run, points: Sequence[Point]) -> list[tuple[float, float]]:
    """(minutes of training, value) of each point, on the clock of ``Run.elapsed``."""
    timed = ((run.elapsed(p.wall_time), p.value) for p in points)
    return [(seconds / 60, value) for seconds, value in timed if seconds is not None]


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round values (1, 2 or 5 times a power of ten apart) from at or below ``low`` to at or above
    ``high``; the axis spans them, first to last."""
    if not high > low:  # one value (or none): widen around it
        pad = abs(low) * 0.1 or 0.5
        low, high = low - pad, high + pad
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [i * step for i in range(first, last + 1)]


def _tick_label(value: float, ticks: Sequence[float]) -> str:
    step = ticks[1] - ticks[0]
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    label = f"{value:,.{decimals}f}"
    return "0" if float(label.replace(",", "")) == 0 else label  # no "-0.0"


def _draw_panel(image, draw, font, origin: tuple[int, int], titles: tuple[str, str, str], curves) -> None:
    """One panel at ``origin`` (its top left corner): ``titles`` (panel, x axis, y axis), and ``curves``, a list of
    ``Curve``: their bands drawn see-through first, then their points as lines."""
    from PIL import ImageDraw

    title, x_title, y_title = titles
    left, top = origin[0] + MARGIN_LEFT, origin[1] + MARGIN_TOP
    right, bottom = origin[0] + PANEL_WIDTH - MARGIN_RIGHT, origin[1] + PANEL_HEIGHT - MARGIN_BOTTOM
    centre_x = (left + right) // 2
    place_text(draw, font, (centre_x, origin[1] + MARGIN_TOP // 2), title, "mm")
    place_text(draw, font, (centre_x, bottom + 36), x_title, "mm")
    vertical_text(image, font, (origin[0] + 14, (top + bottom) // 2), y_title)

    xs = [x for curve in curves for x, _ in curve.points]
    ys = [y for curve in curves for _, y in curve.points if math.isfinite(y)]
    ys += [y for curve in curves for _, *ends in curve.band for y in ends if math.isfinite(y)]
    x_ticks = nice_ticks(min(xs, default=0.0), max(xs, default=1.0))
    y_ticks = nice_ticks(min(ys, default=0.0), max(ys, default=1.0))

    def to_pixels(x: float, y: float) -> tuple[float, float]:
        fx = (x - x_ticks[0]) / (x_ticks[-1] - x_ticks[0])
        fy = (y - y_ticks[0]) / (y_ticks[-1] - y_ticks[0])
        return left + fx * (right - left), bottom - fy * (bottom - top)

    # Grid lines and tick labels, then the frame over them.
    for x in x_ticks:
        px = to_pixels(x, y_ticks[0])[0]
        draw.line([(px, top), (px, bottom)], fill=GRID)
        draw.line([(px, bottom), (px, bottom + 4)], fill=AXIS)
        place_text(draw, font, (px, bottom + 7), _tick_label(x, x_ticks), "mt")
    for y in y_ticks:
        py = to_pixels(x_ticks[0], y)[1]
        draw.line([(left, py), (right, py)], fill=GRID)
        draw.line([(left - 4, py), (left, py)], fill=AXIS)
        place_text(draw, font, (left - 7, py), _tick_label(y, y_ticks), "rm")
    draw.rectangle([left, top, right, bottom], outline=AXIS)

    blend = ImageDraw.Draw(image, "RGBA")  # fills with an alpha are blended into the image below them
    for curve in curves:
        for stretch in _finite_stretches(curve.band):
            upper = [to_pixels(x, high) for x, _, high in stretch]
            lower = [to_pixels(x, low) for x, low, _ in reversed(stretch)]
            blend.polygon(upper + lower, fill=(*curve.colour, BAND_ALPHA))
    for curve in curves:
        shape, width = curve_style(curve.index, curve.count)
        pixels = [to_pixels(x, y) for x, y in curve.points if math.isfinite(y)]
        if len(pixels) > 1:
            draw.line(pixels, fill=curve.colour, width=width, joint="curve")
        if len(pixels) <= MARKED_POINTS:
            marked = pixels
        else:  # about MARKERS_PER_CURVE markers, shifted by a fraction of their spacing for each group
            every = len(pixels) / MARKERS_PER_CURVE
            offset = every * (curve.index % curve.count) / curve.count
            marked = [pixels[int(offset + k * every)] for k in range(MARKERS_PER_CURVE)]
        for xy in marked:
            marker(draw, xy, shape, curve.colour)
    if not ys:
        place_text(draw, font, (centre_x, (top + bottom) // 2), "no values logged", "mm", fill=AXIS)


def _finite_stretches(band: Sequence[BandPoint]) -> Iterator[list[BandPoint]]:
    """The band cut where it is not finite, in stretches of two points or more (what a polygon needs)."""
    stretch: list[BandPoint] = []
    for entry in [*band, (math.nan, math.nan, math.nan)]:  # the sentinel ends the last stretch
        if all(math.isfinite(value) for value in entry):
            stretch.append(entry)
            continue
        if len(stretch) > 1:
            yield stretch
        stretch = []


# ---------------------------------------------------------------------------------------------- command
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.plot is not None and Path(args.plot).suffix.lower() != ".png":
            raise ConfigurationError(
                f"--plot {args.plot!r} must name a .png file: the plot is a PNG image (e.g. --plot runs/compare.png)."
            )
        runs = [read_run(path, name) for path, name in find_runs(args.run_dirs)]
        groups = group_runs(runs, group=not args.no_group)
        for name, value in (("--at-step", args.at_step), ("--at-minutes", args.at_minutes)):
            if value is not None and not value > 0:
                raise ConfigurationError(f"{name} must be positive, got {value}.")
        print(format_table(groups))
        if args.at_step is not None:
            print(f"\nAt step {args.at_step:,}:\n\n{at_table(groups, step=args.at_step)}")
        if args.at_minutes is not None:
            print(
                f"\nAfter {args.at_minutes:g} minutes of training:\n\n{at_table(groups, minutes=args.at_minutes)}"
            )
        if args.plot is not None:
            plot_groups(groups, args.plot)
            print(f"wrote {args.plot}", file=sys.stderr)
    except ConfigurationError as error:
        print(f"rrn compare: error: {error}", file=sys.stderr)
        return 2
    return 0
