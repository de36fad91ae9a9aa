"""``rrn compare``: several runs side by side, as one Markdown table and, if asked, one plot.

    rrn compare runs/nth_farthest_rmc_cpu/version_0 runs/nth_farthest_lstm_cpu/version_0
    rrn compare runs/ --plot runs/compare.png

Each RUN_DIR is a run folder written by ``rrn fit`` (``runs/<name>/version_N``, the folder that holds the TensorBoard
event files), or any folder above run folders, which stands for every run folder below it (sorted by path, version_2
before version_10). The table has one row per run:

- run: the run folder, relative to the current directory (else as given);
- core: the core's class (its ``class_path`` in ``hparams.yaml``, else in ``config.yaml``);
- parameters: trainable parameters (``hparams.yaml``), "-" where the run does not record them;
- steps: the largest step of any scalar; wall time: the time spent training (h:mm:ss), see below;
- best validation metric: the best value of the metric the run reports as best in TensorBoard (``monitor`` and
  ``monitor_mode`` in ``hparams.yaml``, written by ``rrn_lightning.insight``: the checkpoints' monitored metric, else
  the task's own, e.g. val/ppl for a language model), else of ``checkpoint.monitor`` / ``checkpoint.mode`` in
  ``config.yaml``, else val/loss (lower is better); with its step;
- test metric: the last value of that metric's ``test/`` counterpart (val/acc -> test/acc), logged by ``rrn test``.

``--plot FILE.png`` draws, with Pillow alone, each run's validation metric against step and against wall time (minutes
of training, on the clock below), one colour per run; runs that monitor different metrics get one row of panels per
metric. ``plot_size`` gives the image's size.

Wall time leaves out the idle gaps between a run's processes (an interrupted run and its resumption, a fit and its
`rrn test`): it is the sum, over the run's event files, of each file's span, the last minus the first wall time of that
file's ``train/`` and ``val/`` scalars. A file holding no such scalars (the ``test/`` file of `rrn test`) spans nothing.
The wall-time axis of the plot runs on the same clock: a point sits at the spans of the earlier files (in time) plus its
time since its own file's first ``train/`` or ``val/`` scalar, so a run's last such scalar sits at its wall time.

Spans are taken from each file as written, read one file at a time, not from the series that TensorBoard shows for the
whole folder. When a run resumes from a checkpoint, its new file restarts at the checkpoint's step and TensorBoard hides
whatever the interrupted process logged at or after that step (its purge), so that no step appears twice; the values
(table and plot) are that purged series. But the hidden stretch was spent training all the same (and redone after the
resume), and a span cut at the last value TensorBoard keeps would also drop the time between that value and the
checkpoint; so it counts, and on the plot it shows as the stretch between the interrupted file's last shown point and
the resumed file's first.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from .common import ConfigurationError

DESCRIPTION = (
    "Compare runs: a Markdown table of their results, and optionally a plot of their validation curves."
)

EVENT_FILES = "events.out.tfevents.*"
# The scalars whose wall times make an event file's span: what fit and validate log (`rrn test` logs under test/).
TIMED_PREFIXES = ("train/", "val/")
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

    def _all_points(self) -> Iterable[Point]:
        return (point for points in self.scalars.values() for point in points)

    @property
    def wall_seconds(self) -> float | None:
        """Seconds of training: the sum of the event files' spans; None where no file holds train/ or val/ scalars."""
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
        return max((p.step for p in self._all_points()), default=None)

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
    )


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


# ---------------------------------------------------------------------------------------------- the table
COLUMNS = ("run", "core", "parameters", "steps", "wall time", "best validation metric", "test metric")
RIGHT_ALIGNED = {"parameters", "steps", "wall time"}


def format_duration(seconds: float) -> str:
    """Seconds as h:mm:ss (hours grow past 24)."""
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def table_row(run: Run) -> list[str]:
    """A run's cells, in the order of COLUMNS."""
    best, test = run.best, run.test
    wall_seconds = run.wall_seconds
    return [
        run.name,
        run.core or MISSING,
        MISSING if run.parameters is None else f"{run.parameters:,}",
        MISSING if run.steps is None else str(run.steps),
        MISSING if wall_seconds is None else format_duration(wall_seconds),
        MISSING if best is None else f"{run.metric} {best.value:.4f} (step {best.step})",
        MISSING if test is None else f"{run.test_metric} {test.value:.4f}",
    ]


def format_table(runs: Sequence[Run]) -> str:
    """The runs as a Markdown table, its columns padded to line up as plain text too."""
    rows = [[cell.replace("|", r"\|") for cell in table_row(run)] for run in runs]
    widths = [max(len(column), *(len(row[i]) for row in rows)) for i, column in enumerate(COLUMNS)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.rjust(width) if column in RIGHT_ALIGNED else cell.ljust(width)
            for column, cell, width in zip(COLUMNS, cells, widths, strict=True)
        )
        return "| " + " | ".join(padded) + " |"

    # "---:" right-aligns a column in rendered Markdown.
    rule = [
        ("-" * (w - 1) + ":") if c in RIGHT_ALIGNED else "-" * w for c, w in zip(COLUMNS, widths, strict=True)
    ]
    return "\n".join([line(COLUMNS), line(rule), *(line(row) for row in rows)])


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


def plot_size(metrics: int, runs: int) -> tuple[int, int]:
    """(width, height) in pixels of the plot of ``runs`` runs monitoring ``metrics`` different metrics."""
    return 2 * PANEL_WIDTH, metrics * PANEL_HEIGHT + 2 * LEGEND_MARGIN + runs * LEGEND_ROW_HEIGHT


def run_colour(index: int) -> tuple[int, int, int]:
    """The colour of the index-th run in the plot (the palette repeats past six runs)."""
    return PALETTE[index % len(PALETTE)]


def plot_runs(runs: Sequence[Run], path: str | Path) -> Path:
    """Draw the runs' validation curves into the PNG file ``path`` (its folders are created) and return the path."""
    from PIL import Image, ImageDraw

    path = Path(path)
    metrics = list(dict.fromkeys(run.metric for run in runs))  # in order of first appearance
    image = Image.new("RGB", plot_size(len(metrics), len(runs)), "white")
    draw = ImageDraw.Draw(image)
    font = _font()
    for row, metric in enumerate(metrics):
        members = [(run_colour(i), run) for i, run in enumerate(runs) if run.metric == metric]
        better = "higher" if members[0][1].mode == "max" else "lower"
        by_step = [(c, [(p.step, p.value) for p in run.scalars.get(metric, [])]) for c, run in members]
        by_time = [(c, _minutes_of_training(run, run.scalars.get(metric, []))) for c, run in members]
        top = row * PANEL_HEIGHT
        title = f"{metric} against step ({better} is better)"
        _draw_panel(image, draw, font, (0, top), (title, "step", metric), by_step)
        title = f"{metric} against wall time ({better} is better)"
        x_title = "wall time (minutes of training)"
        _draw_panel(image, draw, font, (PANEL_WIDTH, top), (title, x_title, metric), by_time)

    # The legend: a stroke of each run's colour, then its name.
    top = len(metrics) * PANEL_HEIGHT + LEGEND_MARGIN
    for i, run in enumerate(runs):
        y = top + i * LEGEND_ROW_HEIGHT + LEGEND_ROW_HEIGHT // 2
        draw.line([(MARGIN_LEFT, y), (MARGIN_LEFT + 30, y)], fill=run_colour(i), width=3)
        label = run.name if run.scalars.get(run.metric) else f"{run.name} (no {run.metric} values)"
        _text(draw, font, (MARGIN_LEFT + 40, y), label, "lm")

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
    (colour, [(x, y), ...]) drawn as lines."""
    title, x_title, y_title = titles
    left, top = origin[0] + MARGIN_LEFT, origin[1] + MARGIN_TOP
    right, bottom = origin[0] + PANEL_WIDTH - MARGIN_RIGHT, origin[1] + PANEL_HEIGHT - MARGIN_BOTTOM
    centre_x = (left + right) // 2
    _text(draw, font, (centre_x, origin[1] + MARGIN_TOP // 2), title, "mm")
    _text(draw, font, (centre_x, bottom + 36), x_title, "mm")
    _vertical_text(image, font, (origin[0] + 14, (top + bottom) // 2), y_title)

    xs = [x for _, points in curves for x, _ in points]
    ys = [y for _, points in curves for _, y in points if math.isfinite(y)]
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
        _text(draw, font, (px, bottom + 7), _tick_label(x, x_ticks), "mt")
    for y in y_ticks:
        py = to_pixels(x_ticks[0], y)[1]
        draw.line([(left, py), (right, py)], fill=GRID)
        draw.line([(left - 4, py), (left, py)], fill=AXIS)
        _text(draw, font, (left - 7, py), _tick_label(y, y_ticks), "rm")
    draw.rectangle([left, top, right, bottom], outline=AXIS)

    for colour, points in curves:
        pixels = [to_pixels(x, y) for x, y in points if math.isfinite(y)]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2, joint="curve")
        if len(pixels) <= MARKED_POINTS:
            for px, py in pixels:
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
    if not ys:
        _text(draw, font, (centre_x, (top + bottom) // 2), "no values logged", "mm", fill=AXIS)


def _text(draw, font, xy: tuple[float, float], text: str, anchor: str, fill=TEXT) -> None:
    """``text`` placed by ``anchor`` as Pillow reads it (l/m/r across, t/m down; "mt": centred, top at xy), worked
    out here from the text's ink box, since Pillow's own ``anchor=`` needs a FreeType font."""
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    x = xy[0] - {"l": x0, "m": (x0 + x1) / 2, "r": x1}[anchor[0]]
    y = xy[1] - {"t": y0, "m": (y0 + y1) / 2}[anchor[1]]
    draw.text((x, y), text, fill=fill, font=font)


def _vertical_text(image, font, centre: tuple[int, int], text: str) -> None:
    """``text`` turned a quarter left (read bottom to top), centred on ``centre``: the y axis title."""
    from PIL import Image, ImageDraw

    _, _, width, height = font.getbbox(text)
    label = Image.new("RGBA", (width + 2, height + 2), (255, 255, 255, 0))
    ImageDraw.Draw(label).text((1, 1), text, fill=TEXT, font=font)
    label = label.rotate(90, expand=True)
    image.paste(label, (centre[0] - label.width // 2, centre[1] - label.height // 2), label)


def _font():
    """Pillow's own font (no font files needed), at FONT_SIZE where this Pillow can scale it (10.1 and later)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except (TypeError, OSError, ImportError):  # older Pillow, or one without FreeType: the bitmap font
        return ImageFont.load_default()


# ---------------------------------------------------------------------------------------------- command
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.plot is not None and Path(args.plot).suffix.lower() != ".png":
            raise ConfigurationError(
                f"--plot {args.plot!r} must name a .png file: the plot is a PNG image (e.g. --plot runs/compare.png)."
            )
        runs = [read_run(path, name) for path, name in find_runs(args.run_dirs)]
        print(format_table(runs))
        if args.plot is not None:
            plot_runs(runs, args.plot)
            print(f"wrote {args.plot}", file=sys.stderr)
    except ConfigurationError as error:
        print(f"rrn compare: error: {error}", file=sys.stderr)
        return 2
    return 0
