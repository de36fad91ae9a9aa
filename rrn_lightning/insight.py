"""See inside a run in TensorBoard: curves beyond the loss, the memory's attention, the gates, text samples.

- drawing: ``colorize``, ``AttentionLayout`` and ``attention_image`` (an attention grid that fits a TensorBoard card);
- ``chosen_steps`` and ``eager_cores``: which steps an image shows, and probes without compiled steps;
- ``Insight``: the callback ``rrn fit`` adds to every run (what it writes: its docstring).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from .common import ConfigurationError, DescribesExamples, check_positive_ints
from .cores import CoreTrace
from .drawing import colorize, fit_text, wrap_text
from .drawing import font as text_font
from .lightning_private import accumulating, logged_step
from .runs import monitored_metric
from .tasks import Probe, TaskModule

__all__ = ["AttentionLayout", "Insight", "attention_image", "colorize"]

# ---------------------------------------------------------------------------------------------- drawing
# Sizes in pixels. TensorBoard's Time Series cards fit an image into a box of about 440 x 200 pixels (in a window
# 1600 wide), scaling it down when it is larger: the grid is drawn to fit that box so its labels stay readable
# without "Show actual image size".
CARD_WIDTH = 440
CARD_HEIGHT = 200
MIN_WIDTH = 240  # narrower grids (one slot, a few steps) still get room for a caption
FONT_SIZE = 11
LINE = 14  # pixels per line of text
GAP = 6  # pixels between cells
LEFT = 30  # row labels ("h1", "b1h2") and the slot numbers
TOP = 2 * LINE + 4  # the title, then the column headers (time step and what is read there)
TICKS = LINE  # the key labels under the last row of cells
RIGHT = 22  # the colour bar and its labels


@dataclass(frozen=True)
class AttentionLayout:
    """The geometry of an attention image: ``rows`` cells down (blocks x heads), ``columns`` across (time steps),
    each cell ``slots`` x ``keys`` entries of ``scale`` pixels; a title line and the column headers above, the key
    labels and ``caption_lines`` lines of text below."""

    rows: int
    columns: int
    slots: int
    keys: int
    caption_lines: int = 0

    @property
    def scale(self) -> int:
        """Pixels per attention weight: as many as fit the grid into ``CARD_WIDTH`` x ``CARD_HEIGHT``, 3 to 20."""
        width_room = CARD_WIDTH - LEFT - RIGHT - self.columns * GAP
        height_room = CARD_HEIGHT - TOP - TICKS - GAP - self.caption_lines * LINE - self.rows * GAP
        per_entry = min(width_room // (self.columns * self.keys), height_room // (self.rows * self.slots))
        return max(3, min(20, per_entry))

    @property
    def grid_width(self) -> int:
        return LEFT + self.columns * (self.keys * self.scale + GAP) + RIGHT

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels: the grid's width, at least ``MIN_WIDTH``."""
        width = max(self.grid_width, MIN_WIDTH)
        height = TOP + self.rows * (self.slots * self.scale + GAP) + TICKS + GAP + self.caption_lines * LINE
        return width, height


def attention_image(
    attention: Tensor, steps: list[int], step_labels: list[str], caption: list[str], title: str = ""
) -> Tensor:
    """One example's attention weights ``[T, blocks, H, N, N+n]`` at the time steps ``steps`` -> an RGB image
    ``[height, width, 3]`` uint8 (``AttentionLayout.size``): a grid of cells, one per block and head (rows) and
    step (columns). A cell's rows are the memory slots as queries (0..N-1), its columns the keys: the slots, then
    the input rows (``x``). Weights map to colours on a fixed 0..1 scale (the bar on the right); each row of a
    cell sums to 1. ``step_labels[t]`` (what the core read at step t) heads each column; ``title`` goes above and
    ``caption`` below, wrapped to the image's width."""
    from PIL import Image, ImageDraw

    T, blocks, heads, N, K = attention.shape
    font = text_font(FONT_SIZE)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    # The caption wraps to the width the grid has without it (at most CARD_WIDTH); its lines then make the cells
    # smaller so that the whole image still fits a card.
    text_width = max(AttentionLayout(blocks * heads, len(steps), N, K).grid_width, MIN_WIDTH) - 4
    caption_lines = [part for line in caption for part in wrap_text(measure, line, text_width, font)]
    layout = AttentionLayout(blocks * heads, len(steps), N, K, len(caption_lines))
    width, height = layout.size
    s = layout.scale
    canvas = torch.full((height, width, 3), 255, dtype=torch.uint8)
    cell_w, cell_h = K * s + GAP, N * s + GAP
    for column, t in enumerate(steps):
        for row in range(blocks * heads):
            weights = attention[t, row // heads, row % heads]  # [N, K]
            pixels = colorize(weights).repeat_interleave(s, 0).repeat_interleave(s, 1)  # [N*s, K*s, 3]
            y, x = TOP + row * cell_h, LEFT + column * cell_w
            canvas[y : y + N * s, x : x + K * s] = pixels
    bar_x, bar_height = layout.grid_width - RIGHT + 4, max(layout.rows * cell_h - GAP, LINE * 2)
    ramp = torch.linspace(1, 0, bar_height)[:, None].expand(bar_height, 6)  # [height, 6]: 1 at the top
    canvas[TOP : TOP + bar_height, bar_x : bar_x + 6] = colorize(ramp)

    image = Image.fromarray(canvas.numpy())
    draw = ImageDraw.Draw(image)
    black, grey = (0, 0, 0), (90, 90, 90)
    title = title or "attention: slots (rows) over slots and input x"
    draw.text((2, 2), fit_text(draw, title, width - 4, font), fill=black, font=font)
    for column, t in enumerate(steps):
        x = LEFT + column * cell_w
        label = f"t={t}: {step_labels[t]}" if t < len(step_labels) and step_labels[t] else f"t={t}"
        draw.text((x, TOP - LINE - 2), fit_text(draw, label, cell_w - 2, font), fill=black, font=font)
        y = TOP + layout.rows * cell_h - GAP + 1
        for k in range(K):  # key labels under the last row: slot numbers, then x for the input rows
            if s >= 7 or k in (0, N - 1, N):
                draw.text((x + k * s + max(0, s - 6) // 2, y), str(k) if k < N else "x", fill=grey, font=font)
    for row in range(blocks * heads):
        y = TOP + row * cell_h
        name = f"h{row % heads}" if blocks == 1 else f"b{row // heads}h{row % heads}"
        draw.text((1, y), name, fill=black, font=font)
        for n in range(N):  # slot numbers beside the first column
            if s >= 9 or n in (0, N - 1):
                draw.text((LEFT - 8, y + n * s + (s - FONT_SIZE) // 2), str(n), fill=grey, font=font)
    draw.text((bar_x + 8, TOP - 2), "1", fill=grey, font=font)
    draw.text((bar_x + 8, TOP + bar_height - LINE + 2), "0", fill=grey, font=font)
    y = TOP + layout.rows * cell_h + TICKS + GAP // 2
    for line in caption_lines:
        draw.text((2, y), line, fill=black, font=font)
        y += LINE
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(height, width, 3)


def chosen_steps(length: int, count: int) -> list[int]:
    """``count`` time steps spread evenly over ``0..length-1``, the last one included."""
    if length <= count:
        return list(range(length))
    return (
        sorted({round(i * (length - 1) / (count - 1)) for i in range(count)}) if count > 1 else [length - 1]
    )


@contextmanager
def eager_cores(module: torch.nn.Module) -> Iterator[None]:
    """Every core's ``compile_step`` off for the duration: a probe would compile graphs of its own."""
    saved = [(m, m.compile_step) for m in module.modules() if hasattr(type(m), "compile_step")]
    for m, _ in saved:
        m.compile_step = False
    try:
        yield
    finally:
        for m, value in saved:
            m.compile_step = value


# ---------------------------------------------------------------------------------------------- the callback
class Insight(Callback):
    """What ``rrn fit`` writes to TensorBoard beyond the task's own scalars; the ``insight:`` section of a config
    (each part can be switched off there, e.g. ``--insight.attention=false``):

    - ``train/grad_norm`` (the total L2 norm of the gradients before clipping, unscaled under fp16) and
      ``train/examples_per_s`` or ``train/tokens_per_s`` (wall-clock, over the last ``log_every_n_steps`` batches;
      under DDP rank 0's own rate, one process's share);
    - ``hp/best_val_<metric>`` and ``hp/final_val_<metric>`` for the monitored metric (``runs.monitored_metric``),
      which TensorBoard's HPARAMS tab shows beside the run's hyperparameters;
    - at every ``every_n_validations``-th validation, for validation example ``example`` of the first batch:
      ``attention/example``, an image of the RMC's attention weights (``attention_image``); ``gates/<name>``
      histograms of the input and forget gates (and the LSTM's output gate) over the first ``probe_examples``
      examples, with their means as ``gates/<name>_mean``; ``samples/continuation`` (a language model's
      continuation of the example's first words, sampled with a fixed seed) or ``samples/examples`` (a few
      examples with their target and the model's output).

    Everything drawn comes from the model's ``Probe``. Images are drawn from tensors (the colours) with Pillow's
    ``ImageDraw`` for the labels (TensorBoard's image summaries are PNGs that torch's writer encodes with Pillow).
    Only rank 0 draws and writes; the probes run eagerly (a compiled step would compile a graph of its own for
    them), in eval mode without gradients.

    Args:
        grad_norm: Log ``train/grad_norm``, the gradients' total L2 norm before clipping.
        throughput: Log ``train/examples_per_s`` (``train/tokens_per_s`` for language models).
        hparams: Fill TensorBoard's HPARAMS tab: the run's hyperparameters (the core's among them), its parameter
            count, and the best and final value of the monitored validation metric (``hp/best_val_*``,
            ``hp/final_val_*``).
        attention: Log the attention image of a fixed validation example (cores with attention: the RMC).
        attention_steps: How many time steps the attention image shows (spread over the example, the last one
            included).
        gates: Log gate histograms and means (the RMC's input and forget gates, the LSTM's input, forget and output
            gates) over the first ``probe_examples`` validation examples.
        text: Log text: a language model's continuation of a fixed prompt, or a few examples with the model's
            output.
        text_examples: How many examples the text shows.
        continuation_words: How many words a language model's continuation has.
        every_n_validations: Draw images, histograms and text at every n-th validation (the scalars always).
        example: Which example of the first validation batch the images and the prompt come from (its last one when
            the batch is smaller).
        probe_examples: How many validation examples (of the first batch) the gate histograms read.
    """

    def __init__(
        self,
        grad_norm: bool = True,
        throughput: bool = True,
        hparams: bool = True,
        attention: bool = True,
        attention_steps: int = 4,
        gates: bool = True,
        text: bool = True,
        text_examples: int = 3,
        continuation_words: int = 20,
        every_n_validations: int = 1,
        example: int = 0,
        probe_examples: int = 32,
    ) -> None:
        super().__init__()
        check_positive_ints(
            "Insight",
            attention_steps=attention_steps,
            text_examples=text_examples,
            continuation_words=continuation_words,
            every_n_validations=every_n_validations,
            probe_examples=probe_examples,
        )
        if isinstance(example, bool) or not isinstance(example, int) or not 0 <= example < probe_examples:
            raise ConfigurationError(
                f"Insight: example must be an integer from 0 to probe_examples - 1 = {probe_examples - 1} (an example "
                f"of the first validation batch's first probe_examples), got example={example!r}."
            )
        if text_examples > probe_examples:
            raise ConfigurationError(
                f"Insight: text_examples ({text_examples}) must be at most probe_examples ({probe_examples}): the "
                "text shows examples of the probe."
            )
        self.grad_norm, self.throughput, self.hparams = grad_norm, throughput, hparams
        self.attention, self.attention_steps, self.gates = attention, attention_steps, gates
        self.text, self.text_examples, self.continuation_words = text, text_examples, continuation_words
        self.every_n_validations, self.example, self.probe_examples = (
            every_n_validations,
            example,
            probe_examples,
        )
        self.best: float | None = None  # of the monitored metric; saved in checkpoints
        self._validations = 0
        self._probe_batch: Any = None
        self._window: deque[tuple[float, int]] = deque()
        self._unit = "examples"

    # ------------------------------------------------------------------ what is watched
    def monitored(self, trainer: Trainer, pl_module: LightningModule) -> tuple[str, str]:
        """``(tag, mode)`` of the metric reported as best and final (``runs.monitored_metric``)."""
        return monitored_metric(trainer, pl_module)

    @staticmethod
    def _writer(trainer: Trainer):
        """The TensorBoard ``SummaryWriter`` on rank 0 of a run that logs to TensorBoard, else None."""
        logger = trainer.logger
        if not trainer.is_global_zero or not isinstance(logger, TensorBoardLogger):
            return None
        return logger.experiment

    # ------------------------------------------------------------------ hparams
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        logger = trainer.logger
        if stage != "fit" or not self.hparams or not hasattr(logger, "declare_hparams"):
            return
        tag, mode = self.monitored(trainer, pl_module)
        best, final = _hp_tags(tag)
        logger.declare_hparams(
            extra={
                "parameters": sum(p.numel() for p in pl_module.parameters() if p.requires_grad),
                "monitor": tag,
                "monitor_mode": mode,
            },
            metrics=[best, final, "val/loss"],
        )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "validations": self._validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")
        self._validations = state_dict.get("validations", 0)

    # ------------------------------------------------------------------ training curves
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        # Only at the steps whose values reach the logger (Lightning writes step values every log_every_n_steps).
        if not self.grad_norm or trainer.logger is None or trainer.log_every_n_steps < 1:
            return
        if (trainer.global_step + 1) % trainer.log_every_n_steps != 0:
            return
        norms = [
            torch.linalg.vector_norm(p.grad.detach(), dtype=torch.float32)  # float32 also for bf16 weights
            for p in pl_module.parameters()
            if p.grad is not None
        ]
        if norms:
            total = torch.linalg.vector_norm(torch.stack(norms))
            pl_module.log("train/grad_norm", total, on_step=True, on_epoch=False)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.throughput and not self._window:
            self._window.append((time.perf_counter(), 0))

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx
    ) -> None:
        if (
            not self.throughput
            or trainer.logger is None
            or not isinstance(pl_module, TaskModule)
            or not self._window
        ):
            return
        self._unit, count = pl_module.batch_counts(batch)
        self._window.append((time.perf_counter(), count))
        while len(self._window) > max(trainer.log_every_n_steps, 1) + 1:
            self._window.popleft()
        if accumulating(trainer):
            return  # no optimizer step after this batch: Lightning does not log it
        if trainer.log_every_n_steps < 1 or trainer.global_step % trainer.log_every_n_steps != 0:
            return  # a step whose values do not reach the logger (global_step counts this batch already)
        seconds = self._window[-1][0] - self._window[0][0]
        counted = sum(c for _, c in list(self._window)[1:])
        if seconds > 0:
            pl_module.log(f"train/{self._unit}_per_s", counted / seconds, on_step=True, on_epoch=False)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._window.clear()  # the time spent validating is not training throughput

    # ------------------------------------------------------------------ validation
    def _probes_due(self, trainer: Trainer) -> bool:
        """Whether this validation draws (images, histograms, text): during fit, not the sanity check, on the rank
        that writes, and at every ``every_n_validations``-th validation."""
        if trainer.sanity_checking or trainer.state.fn != "fit" or self._writer(trainer) is None:
            return False
        if not (self.attention or self.gates or self.text):
            return False
        return self._validations % self.every_n_validations == 0

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs,
        batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx == 0 and dataloader_idx == 0 and self._probes_due(trainer):
            self._probe_batch = _first_rows(batch, self.probe_examples)  # copies: the batch itself is let go

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # on_validation_end, not on_validation_epoch_end: by now every rank has synced the epoch's metrics (reading
        # callback_metrics on rank 0 alone earlier would start collectives there only). Our checkpoint callback runs
        # after this one (Lightning orders checkpoint callbacks last), so it saves the updated best.
        batch, self._probe_batch = self._probe_batch, None
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        writer = self._writer(trainer)
        if writer is None:
            return
        # The step Lightning logs this validation's metrics at: the batches stepped before the one that triggered
        # it (one less than global_step), so that images and curves line up.
        step = logged_step(trainer)
        if self.hparams:
            self._log_best(trainer, pl_module, writer, step)
        self._validations += 1
        if batch is not None and isinstance(pl_module, TaskModule):
            with torch.no_grad(), eager_cores(pl_module):
                self._log_probe(trainer, pl_module, writer, batch, step)

    def _log_best(self, trainer: Trainer, pl_module: LightningModule, writer, step: int) -> None:
        tag, mode = self.monitored(trainer, pl_module)
        value = trainer.callback_metrics.get(tag)
        if value is None:
            return
        value = float(value)
        if math.isfinite(value) and (
            self.best is None or (value > self.best if mode == "max" else value < self.best)
        ):
            self.best = value
        best_tag, final_tag = _hp_tags(tag)
        if self.best is not None:
            writer.add_scalar(best_tag, self.best, step)
        writer.add_scalar(final_tag, value, step)

    def _log_probe(self, trainer: Trainer, pl_module: TaskModule, writer, batch: Any, step: int) -> None:
        # The predictions under the run's precision (autocast for *-mixed), as validation scored them; the trace
        # below runs in float32 (the cores cast what they read).
        with trainer.precision_plugin.forward_context():
            probe = pl_module.probe(batch)
        data = trainer.datamodule if isinstance(trainer.datamodule, DescribesExamples) else None
        index = min(self.example, probe.inputs.shape[0] - 1)
        described = (
            data.describe_example(batch, index, probe.predictions[index]) if data is not None else None
        )
        length = int(probe.lengths[index]) if probe.lengths is not None else probe.inputs.shape[1]
        # One trace over the probe examples serves both the gate histograms and the example's attention.
        trace = (
            probe.core.trace(probe.inputs, lengths=probe.lengths)
            if (self.attention or self.gates) and probe.core is not None
            else None
        )
        if self.attention and trace is not None and trace.attention is not None:
            # No caption: the image stays short enough for a card; the example in words is in samples/.
            image = attention_image(
                trace.attention[index, :length].cpu(),  # [T, blocks, H, N, N+n]
                chosen_steps(length, self.attention_steps),
                described.steps if described is not None else [""] * length,
                [],
                title=f"step {step}, validation example {index} (in samples/): slots over slots and x",
            )
            writer.add_image("attention/example", image, step, dataformats="HWC")
        if self.gates and trace is not None:
            self._log_gates(trace, writer, step)
        if self.text:
            with trainer.precision_plugin.forward_context():
                tag, text = self._text(data, batch, probe, index)
            if text:
                writer.add_text(tag, text, step)

    @staticmethod
    def _log_gates(trace: CoreTrace, writer, step: int) -> None:
        # Fixed bins over a gate's range, so that the histograms compare across validations.
        edges = torch.linspace(0, 1, 41).numpy()
        for name, values in trace.gates.items():
            real = values[trace.mask].flatten().cpu()  # the gates at real (not padded) steps
            if real.numel() == 0:
                continue
            writer.add_histogram(f"gates/{name}", real, step, bins=edges)
            writer.add_scalar(f"gates/{name}_mean", float(real.mean()), step)

    def _text(self, data: DescribesExamples | None, batch: Any, probe: Probe, index: int) -> tuple[str, str]:
        """``(tag, Markdown)``: a language model's continuation of example ``index``'s first words, or the first
        examples with their target and the model's output; empty text where neither is available."""
        if probe.generate is not None and probe.words and probe.tokens is not None:
            words = probe.words
            prompt = probe.tokens[index, : min(10, probe.tokens.shape[1])].tolist()
            generator = torch.Generator().manual_seed(0)
            sampled = probe.generate(prompt, self.continuation_words, generator=generator)
            return "samples/continuation", (
                f"**prompt** {' '.join(words[i] for i in prompt)}\n\n"
                f"**continuation** (sampled, seed 0) {' '.join(words[i] for i in sampled)}"
            )
        if data is None:
            return "samples/examples", ""
        shown = []
        chosen = list(range(min(self.text_examples, probe.inputs.shape[0])))
        if self.attention and index not in chosen:
            chosen.append(index)  # the attention image's example is always among them
        for i in chosen:
            lines = data.describe_example(batch, i, probe.predictions[i]).lines
            mark = " (the attention image's)" if self.attention and i == index else ""
            code = "\n".join("    " + line for line in lines)  # a Markdown code block each
            shown.append(f"**validation example {i}**{mark}\n\n{code}")
        return "samples/examples", "\n\n".join(shown)


def _hp_tags(monitor: str) -> tuple[str, str]:
    """The HPARAMS scalars of a monitored metric: val/acc -> (hp/best_val_acc, hp/final_val_acc)."""
    metric = monitor.removeprefix("val/").replace("/", "_")
    return f"hp/best_val_{metric}", f"hp/final_val_{metric}"


def _first_rows(batch: Any, count: int) -> Any:
    """The first ``count`` examples of a batch (a tensor or a tuple / named tuple of tensors), detached copies."""
    if isinstance(batch, Tensor):
        return batch[:count].detach().clone()
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_first_rows(b, count) for b in batch))
    if isinstance(batch, tuple | list):
        return type(batch)(_first_rows(b, count) for b in batch)
    return batch
