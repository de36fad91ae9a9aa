"""Sequence to sequence: a core reads the input, then (the same core, as in the paper's code, or a separate
decoder core) keeps running to produce the outputs, one MLP-head classification per output step."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric

from ..common import IGNORE_INDEX, ConfigurationError, Seq2SeqBatch, as_batch, check_positive_ints
from ..cores import RecurrentCore
from ..cores.compiling import CompileMode
from .base import CORE_SETTING, Probe, Stage, TaskModule, mlp

__all__ = ["Seq2Seq", "SequenceAccuracy"]


class SequenceAccuracy(Metric):
    """Per-character accuracy over the real (not padding) target positions and whole-sequence accuracy (every
    real position right), as counts summed over batches and DDP ranks."""

    full_state_update = False

    def __init__(self, whole_sequence: bool = False) -> None:
        super().__init__()
        self.whole_sequence = whole_sequence
        self.add_state("correct", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: Tensor, targets: Tensor) -> None:
        real = targets != IGNORE_INDEX
        right = (predictions == targets) & real
        if self.whole_sequence:
            self.correct += int((right | ~real).all(dim=1).sum())
            self.total += targets.shape[0]
        else:
            self.correct += int(right.sum())
            self.total += int(real.sum())

    def compute(self) -> Tensor:
        return self.correct.float() / self.total.clamp(min=1)


class Seq2Seq(TaskModule):
    """Read a padded input sequence, then produce the output sequence.

    Batches are ``Seq2SeqBatch``es ``(inputs [B, T_in, D], input_lengths [B], targets [B, T_out],
    target_lengths [B])`` with targets padded by -100 (``LearnToExecuteDataModule``, ``SortingDataModule``). The encoder core reads the inputs with
    their lengths, so its state is each example's state at its true end; the decoder (the same core unless
    ``decoder_core`` is given) continues from that state for T_out steps:

    - non-autoregressive (default; the paper found it best): the decoder reads zeros;
    - ``autoregressive=True``: the decoder reads an embedding of the previous output (a start symbol first) -
      the true one in training (teacher forcing), its own greedy choice in validation and test.

    An MLP head classifies each decoder output. The loss is the cross-entropy over the real target positions;
    ``{stage}/char_acc`` and ``{stage}/seq_acc`` are per-character and whole-sequence accuracy, exact under DDP.
    ``batch_loss`` makes it a ``SupportsBatchLoss`` model, which ``datamodules.CurriculumCallback`` can steer by.

    Args:
        core: Encoder core (and decoder, unless ``decoder_core``); its ``input_size`` is linked from the data.
        num_classes: Output symbols (linked from the data).
        decoder_core: Optional separate decoder core with a state of the same form as the encoder's.
        autoregressive: Feed the previous output back (see above).
        head_sizes: Hidden layer sizes of the MLP head; the paper uses four layers of 256.
        optimizer, lr_scheduler, compile_step: As in ``SequenceClassifier`` (``compile_step`` also sets the
            decoder core's).
    """

    kind = "sequence-to-sequence model"
    checkpoint_modules = frozenset({"core", "head"})
    optional_checkpoint_modules = frozenset({"decoder_core", "feedback"})
    checkpoint_settings = {
        "core": CORE_SETTING,
        "decoder_core": CORE_SETTING.replace("model.init_args.core", "model.init_args.decoder_core"),
        "head": "num_classes (from the data) or head_sizes",
        "feedback": "autoregressive or num_classes",
    }

    one_row_core = True

    def __init__(
        self,
        core: RecurrentCore,
        num_classes: int,
        decoder_core: RecurrentCore | None = None,
        autoregressive: bool = False,
        head_sizes: tuple[int, ...] = (256, 256, 256, 256),
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        compile_step: CompileMode | None = None,
    ) -> None:
        super().__init__(core, optimizer, lr_scheduler, compile_step)
        name = self.owner
        check_positive_ints(name, num_classes=num_classes)
        self.check_head_sizes(head_sizes)
        if decoder_core is not None:
            self.check_core(decoder_core, "decoder_core")
            self.set_compile_step(compile_step, decoder_core)
            encoder_state = core.state_shapes(core.initial_state(1))
            decoder_state = decoder_core.state_shapes(decoder_core.initial_state(1))
            if encoder_state != decoder_state:
                raise ConfigurationError(
                    f"{name}: decoder_core must carry a state of the encoder's form to continue from it: encoder "
                    f"state {encoder_state}, decoder state {decoder_state}."
                )
        self.save_config_hyperparameters()
        self.core = core
        self.decoder_core = decoder_core
        self.autoregressive = autoregressive
        decoder = decoder_core or core
        self.feedback = nn.Embedding(num_classes + 1, decoder.input_size) if autoregressive else None
        self.start_symbol = num_classes
        self.head = mlp(decoder.output_size, tuple(head_sizes), num_classes)
        self.add_metric("train", "loss", MeanMetric(nan_strategy="ignore"))
        for stage in ("train", "val", "test"):
            for kind in ("char", "seq"):
                self.add_metric(stage, f"{kind}_acc", SequenceAccuracy(whole_sequence=kind == "seq"))

    primary_metric = ("seq_acc", "max")
    # Checkpoints written before the metrics had one convention held them in a ModuleDict.
    legacy_state_prefixes = {f"metrics.train_{kind}.": f"train_{kind}_acc." for kind in ("char", "seq")}

    def probe(self, batch: Seq2SeqBatch) -> Probe:
        """The encoder's inputs (what the attention maps show) and the decoded outputs."""
        batch = as_batch(batch, Seq2SeqBatch)
        decoded = self(batch.inputs, batch.input_lengths, batch.targets.shape[1]).argmax(-1)
        return Probe(batch.inputs, batch.input_lengths, decoded, self.core)  # the encoder's attention

    def batch_counts(self, batch: Seq2SeqBatch) -> tuple[str, int]:
        return "examples", as_batch(batch, Seq2SeqBatch).inputs.shape[0]

    @property
    def decoder(self) -> RecurrentCore:
        return self.decoder_core or self.core

    def encode(self, inputs: Tensor, input_lengths: Tensor | None) -> Any:
        _, state = self.core(inputs, lengths=input_lengths)
        return state

    def forward(
        self, inputs: Tensor, input_lengths: Tensor | None, steps: int, targets: Tensor | None = None
    ):
        """Logits ``[B, steps, num_classes]``; with ``autoregressive`` and ``targets`` given, teacher forcing,
        otherwise the decoder's own greedy choices are fed back."""
        state = self.encode(inputs, input_lengths)
        B = inputs.shape[0]
        if not self.autoregressive:
            zeros = inputs.new_zeros(B, steps, self.decoder.input_size)
            outputs, _ = self.decoder(zeros, state)
            return self.head(outputs)
        start = torch.full((B, 1), self.start_symbol, device=inputs.device, dtype=torch.long)
        if targets is not None:
            previous = torch.cat([start, targets[:, :-1].clamp(min=0)], dim=1)  # padding reads as symbol 0
            outputs, _ = self.decoder(self.feedback(previous).to(inputs.dtype), state)
            return self.head(outputs)
        logits, token = [], start[:, 0]
        for _ in range(steps):
            out, state = self.decoder.step(self.feedback(token).to(inputs.dtype), state)
            step_logits = self.head(out)
            logits.append(step_logits)
            token = step_logits.argmax(-1)
        return torch.stack(logits, dim=1)

    def batch_loss(self, batch: Seq2SeqBatch) -> Tensor:
        """The mean training loss of a batch (teacher-forced when autoregressive): ``SupportsBatchLoss``, what
        curriculum callbacks measure."""
        batch = as_batch(batch, Seq2SeqBatch)
        logits = self(batch.inputs, batch.input_lengths, batch.targets.shape[1], batch.targets)
        return F.cross_entropy(
            logits.flatten(0, 1).float(), batch.targets.flatten(), ignore_index=IGNORE_INDEX
        )

    def shared_step(self, batch: Seq2SeqBatch, stage: Stage, batch_idx: int) -> Tensor:
        batch = as_batch(batch, Seq2SeqBatch)
        targets = batch.targets
        teacher = targets if stage == "train" else None  # evaluation decodes on its own
        logits = self(batch.inputs, batch.input_lengths, targets.shape[1], teacher)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)
        predictions = logits.argmax(-1)
        B = targets.shape[0]
        self.log_loss(stage, loss, B)
        for kind in ("char", "seq"):
            metric = self.metric(stage, f"{kind}_acc")
            metric.update(predictions, targets)
            self.log_metric(stage, f"{kind}_acc", metric, B)
        return loss

    def predict_step(self, batch: Seq2SeqBatch, batch_idx: int) -> dict[str, Tensor]:
        batch = as_batch(batch, Seq2SeqBatch)
        logits = self(batch.inputs, batch.input_lengths, batch.targets.shape[1])
        return {"prediction": logits.argmax(-1), "target": batch.targets}
