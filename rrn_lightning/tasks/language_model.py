"""Word-level language modelling: embedding, a recurrent core carried across BPTT windows, softmax output."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn
from torchmetrics import Metric

from ..common import (
    EOS_ID,
    IGNORE_INDEX,
    ConfigurationError,
    LanguageModelBatch,
    as_batch,
    check_positive_ints,
)
from ..cores import RecurrentCore
from ..cores.compiling import CompileMode
from .base import CORE_SETTING, Probe, Stage, TaskModule

__all__ = ["LanguageModel", "TokenNLL"]


class TokenNLL(Metric):
    """Mean negative log-likelihood per token over everything seen: sum of NLL / number of tokens, summed over
    DDP ranks before the division (so it is exact, whatever each rank saw). ``exp=True`` gives perplexity.
    ``finite_only=True`` leaves out batches whose sum is not finite (batches that ``NonFiniteLoss`` skips)."""

    full_state_update = False

    def __init__(self, exp: bool = False, finite_only: bool = False) -> None:
        super().__init__()
        self.exp, self.finite_only = exp, finite_only
        self.add_state("nll", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, nll_sum: Tensor, tokens: Tensor | int) -> None:
        nll_sum = nll_sum.detach().to(torch.float64)
        tokens = torch.as_tensor(tokens, device=nll_sum.device)
        if self.finite_only:  # torch.where, not an if: no wait for the device
            keep = torch.isfinite(nll_sum)
            nll_sum, tokens = torch.where(keep, nll_sum, 0.0), torch.where(keep, tokens, 0)
        self.nll += nll_sum
        self.tokens += tokens

    def compute(self) -> Tensor:
        mean = self.nll / self.tokens.clamp(min=1)
        return mean.exp() if self.exp else mean


class LanguageModel(TaskModule):
    """A word-level language model: embedding (+ dropout), a recurrent core, dropout, softmax over the vocabulary.

    Batches are ``LanguageModelBatch``es ``(inputs, targets)``, int64 ``[B, T]`` windows of B contiguous streams (``WordLMDataModule``);
    targets of ``-100`` (padding) are ignored. The core's state is carried from one window to the next (detached:
    truncated backpropagation through time), with one carried state for training and separate ones for
    validation and test, each reset when its epoch starts. Logs ``{train,val,test}/loss`` (mean NLL per token, in
    nats) and ``{val,test}/ppl`` = exp(sum of NLL / number of tokens) over the whole split, exact under DDP.

    Args:
        core: The recurrent core; its ``input_size`` is the embedding size.
        vocab_size: Number of words (linked from the data by the ``rrn`` CLI).
        dropout: Dropout on the embeddings and on the core's outputs (each unless set on its own below).
        tie_weights: Share the embedding matrix with the output layer (Press & Wolf 2017; Inan et al. 2017); when
            the core's output size differs from the embedding size, a Linear projection maps one to the other.
            Only with the full softmax: the adaptive softmax has per-cluster projections of other shapes.
        adaptive_softmax_cutoffs: Use ``torch.nn.AdaptiveLogSoftmaxWithLoss`` with these cutoffs (increasing,
            below ``vocab_size``; ids are sorted by frequency by our vocabulary, as it requires), e.g.
            ``[20000, 60000]`` for WikiText-103; ``None`` (default) for the full softmax.
        adaptive_softmax_div_value: Size ratio between successive clusters' projections.
        init_range: When set, every parameter is drawn uniform in ``[-init_range, init_range]`` (Zaremba et al.
            2014 use 0.1); otherwise each layer keeps its own initialisation.
        optimizer: Optimizer factory (``class_path: torch.optim.SGD`` in YAML).
        lr_scheduler: Optional LR scheduler factory, stepped every epoch (``ReduceLROnPlateau`` watches
            ``val/loss``).
        vocab: The words in id order (``vocab[i]`` is word ``i``), linked from the data by the ``rrn`` CLI
            (``WordLMDataModule.vocab``). Stored in checkpoints (``rrn generate`` needs nothing else) and in
            ``vocab.txt`` beside them, and compared with the vocabulary of a checkpoint that is loaded into this
            model. Not a hyperparameter (WikiText-103's has 267k words): a checkpoint keeps it once.
        compile_step: Run the core's step under ``torch.compile``; None keeps the core's own setting (see
            ``TaskModule``).
        embedding_dropout: Dropout on the embeddings; None: ``dropout``.
        output_dropout: Dropout on the core's outputs, before the softmax; None: ``dropout``.
    """

    kind = "language model"
    checkpoint_modules = frozenset({"core", "embedding"})
    optional_checkpoint_modules = frozenset({"decoder", "projection", "adaptive"})
    checkpoint_settings = {
        "core": CORE_SETTING,
        "embedding": "the embedding size (the core's input_size)",
        "decoder": "the core's output size",
        "projection": "tie_weights or the core's size",
        "adaptive": "adaptive_softmax_cutoffs or the core's output size",
    }
    vocabulary_modules = frozenset({"embedding", "decoder", "adaptive"})
    one_row_core = True

    def __init__(
        self,
        core: RecurrentCore,
        vocab_size: int,
        dropout: float = 0.0,
        tie_weights: bool = False,
        adaptive_softmax_cutoffs: list[int] | None = None,
        adaptive_softmax_div_value: float = 4.0,
        init_range: float | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        vocab: list[str] | None = None,
        compile_step: CompileMode | None = None,
        embedding_dropout: float | None = None,
        output_dropout: float | None = None,
    ) -> None:
        super().__init__(core, optimizer, lr_scheduler, compile_step)
        name = self.owner
        check_positive_ints(name, vocab_size=vocab_size)
        if vocab is not None and (
            not isinstance(vocab, list | tuple)
            or len(vocab) != vocab_size
            or not all(isinstance(w, str) for w in vocab)
        ):
            described = f"{len(vocab)} words" if isinstance(vocab, list | tuple) else type(vocab).__name__
            raise ConfigurationError(
                f"{name}: vocab must list the vocab_size={vocab_size} words in id order, got {described}; pass "
                "the data's words (WordLMDataModule.vocab.itos) or leave vocab out."
            )
        embedding_dropout = dropout if embedding_dropout is None else embedding_dropout
        output_dropout = dropout if output_dropout is None else output_dropout
        for key, value in (
            ("dropout", dropout),
            ("embedding_dropout", embedding_dropout),
            ("output_dropout", output_dropout),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
                raise ConfigurationError(f"{name}: {key} must lie in [0, 1), got {key}={value!r}.")
        if init_range is not None and not init_range > 0:
            raise ConfigurationError(
                f"{name}: init_range must be positive or None, got init_range={init_range!r}."
            )
        if adaptive_softmax_cutoffs is not None:
            cutoffs = list(adaptive_softmax_cutoffs)
            if (
                not cutoffs
                or any(not isinstance(c, int) or c <= 0 for c in cutoffs)
                or cutoffs != sorted(set(cutoffs))
                or cutoffs[-1] >= vocab_size
            ):
                raise ConfigurationError(
                    f"{name}: adaptive_softmax_cutoffs must be increasing positive integers below "
                    f"vocab_size={vocab_size}, got adaptive_softmax_cutoffs={adaptive_softmax_cutoffs!r}."
                )
            if tie_weights:
                raise ConfigurationError(
                    f"{name}: tie_weights applies to the full softmax only; the adaptive softmax's clusters have "
                    "projections of other shapes. Set tie_weights: false or adaptive_softmax_cutoffs: null."
                )
        self.save_config_hyperparameters(ignore=("vocab",))
        self.core = core
        self.vocab_size = vocab_size
        embedding_size, output_size = core.input_size, core.output_size
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.output_dropout = nn.Dropout(output_dropout)
        self.projection: nn.Linear | None = None
        self.decoder: nn.Linear | None = None
        self.adaptive: nn.AdaptiveLogSoftmaxWithLoss | None = None
        if adaptive_softmax_cutoffs is not None:
            self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(
                output_size, vocab_size, list(adaptive_softmax_cutoffs), div_value=adaptive_softmax_div_value
            )
        elif tie_weights:
            if output_size != embedding_size:
                self.projection = nn.Linear(output_size, embedding_size)
            self.decoder = nn.Linear(embedding_size, vocab_size)
            self.decoder.weight = self.embedding.weight
        else:
            self.decoder = nn.Linear(output_size, vocab_size)
        if init_range is not None:
            for p in self.parameters():
                nn.init.uniform_(p, -init_range, init_range)
        for stage in ("val", "test"):
            for kind in ("loss", "ppl"):
                self.add_metric(stage, kind, TokenNLL(exp=kind == "ppl"))
        self.add_metric("train", "loss", TokenNLL(finite_only=True))
        self._states: dict[str, Any] = {}  # the carried core state, per stage
        self.vocab_words: list[str] | None = None if vocab is None else list(vocab)  # stored in checkpoints

    # -------------------------------------------------------------- the model
    def forward(self, tokens: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """tokens [B, T] -> hidden [B, T, F] (the input of the output layer) and the core's final state."""
        x = self.embedding_dropout(self.embedding(tokens))
        outputs, state = self.core(x, state)
        hidden = self.output_dropout(outputs)
        if self.projection is not None:
            hidden = self.projection(hidden)
        return hidden, state

    def log_probs(self, hidden: Tensor) -> Tensor:
        """hidden [..., F] -> log-probabilities over the vocabulary [..., V] (float32)."""
        if self.adaptive is not None:
            flat = hidden.reshape(-1, hidden.shape[-1]).float()
            return self.adaptive.log_prob(flat).view(*hidden.shape[:-1], self.vocab_size)
        return torch.log_softmax(self.decoder(hidden).float(), dim=-1)

    def nll(self, hidden: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Sum of the targets' negative log-likelihoods and the number of real (not padding) targets."""
        flat_hidden = hidden.reshape(-1, hidden.shape[-1])
        flat_targets = targets.reshape(-1)
        keep = flat_targets != IGNORE_INDEX
        count = keep.sum()
        if self.adaptive is not None:
            if not bool(keep.all()):
                flat_hidden, flat_targets = flat_hidden[keep], flat_targets[keep]
            if flat_targets.numel() == 0:
                return flat_hidden.sum() * 0.0, count
            out = self.adaptive(flat_hidden.float(), flat_targets)
            return -out.output.sum(), count
        logits = self.decoder(flat_hidden).float()
        return F.cross_entropy(logits, flat_targets, ignore_index=IGNORE_INDEX, reduction="sum"), count

    # -------------------------------------------------------------- steps
    def _carried(self, stage: str, batch_size: int) -> Any:
        state = self._states.get(stage)
        if state is None or self.core.state_batch_size(state) != batch_size:
            return None
        return self.core.detach_state(state, self.device)

    def shared_step(self, batch: LanguageModelBatch, stage: Stage, batch_idx: int) -> Tensor:
        batch = as_batch(batch, LanguageModelBatch)
        inputs, targets = batch.inputs, batch.targets
        if batch_idx == 0:  # an epoch's first window: its rows start afresh (a resumed epoch starts later)
            self._states.pop(stage, None)
        hidden, state = self(inputs, self._carried(stage, inputs.shape[0]))
        self._states[stage] = self.core.detach_state(state)
        nll_sum, count = self.nll(hidden, targets)
        loss = nll_sum / count.clamp(min=1)
        if self._trainer is None:  # called outside a Trainer
            return loss
        if stage == "train":
            self.log_training_loss(nll_sum, count)
        else:
            for kind in ("loss", "ppl"):
                metric = self.metric(stage, kind)
                metric.update(nll_sum, count)
                self.log_metric(stage, kind, metric)
        return loss

    primary_metric = ("ppl", "min")

    def probe(self, batch: LanguageModelBatch) -> Probe:
        """The embedded window (from a fresh state), the most likely next word at each position, and what a
        continuation of the window's words needs."""
        tokens = as_batch(batch, LanguageModelBatch).inputs
        hidden, _ = self(tokens)
        return Probe(
            self.embedding_dropout(self.embedding(tokens)),
            None,
            self.log_probs(hidden).argmax(-1),
            self.core,
            tokens=tokens,
            words=self.vocab_words,
            generate=self.generate,
        )

    def batch_counts(self, batch: LanguageModelBatch) -> tuple[str, int]:
        # Padding (the stream's last window only) counted: no device sync.
        return "tokens", as_batch(batch, LanguageModelBatch).targets.numel()

    # -------------------------------------------------------------- the vocabulary
    # The vocabulary comes in as an argument (linked by the CLI from the data module), not read from
    # trainer.datamodule: the model states what it needs, and works with any source of data that supplies it.
    def _check_vocab(self, words: list[str], where: str) -> None:
        if self.vocab_words is not None and words != self.vocab_words:
            raise ConfigurationError(
                f"LanguageModel: {where} was trained with a different vocabulary ({len(words)} words) than the "
                f"data's ({len(self.vocab_words)} words, same settings needed: corpus, min_freq, max_size). Use the "
                "corpus and settings of the training run."
            )

    def on_fit_start(self) -> None:
        # trainer.log_dir is a collective under DDP (rank 0 broadcasts it): every rank asks, rank 0 writes. Asked
        # inside a rank-zero-only function, it waited forever for the other ranks.
        self._write_vocab(self.trainer.log_dir)

    @rank_zero_only
    def _write_vocab(self, log_dir: str | None) -> None:
        """vocab.txt beside the checkpoints (one word per line, in id order)."""
        if self.vocab_words is not None and log_dir is not None:
            path = Path(log_dir) / "vocab.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(self.vocab_words) + "\n", encoding="utf-8")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.vocab_words is not None:
            checkpoint["vocab"] = list(self.vocab_words)
        if "train" in self._states:  # the state carried into the next training window, for a mid-epoch resume
            checkpoint["carried_state"] = self._states["train"]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        words = checkpoint.get("vocab")
        if words is not None and len(words) != self.vocab_size:
            raise ConfigurationError(
                f"LanguageModel: the checkpoint's vocabulary has {len(words)} words but this model was built for "
                f"vocab_size={self.vocab_size}: the data's vocabulary differs from the training run's. Use the "
                "corpus and settings (min_freq, max_size) of the training run."
            )
        if words is not None:
            self._check_vocab(list(words), "the checkpoint")
            self.vocab_words = list(words)
        if "carried_state" in checkpoint:
            self._states["train"] = checkpoint["carried_state"]  # moved to the model's device when used

    # -------------------------------------------------------------- text
    @torch.no_grad()
    def generate(
        self,
        prompt: list[int],
        length: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> list[int]:
        """Sample ``length`` token ids after ``prompt`` (ids; the model reads ``<eos>`` first, as at a sentence
        start). ``temperature`` divides the log-probabilities; ``top_k`` keeps the k most likely words."""
        if not temperature > 0:
            raise ConfigurationError(
                f"generate: temperature must be positive, got temperature={temperature!r}."
            )
        if top_k is not None and not (isinstance(top_k, int) and top_k >= 1):
            raise ConfigurationError(
                f"generate: top_k must be a positive integer or None, got top_k={top_k!r}."
            )
        was_training = self.training
        self.eval()
        device = self.embedding.weight.device
        tokens = torch.tensor([[EOS_ID, *prompt]], device=device)
        hidden, state = self(tokens)
        out: list[int] = []
        for _ in range(length):
            scores = self.log_probs(hidden[:, -1]) / temperature  # [1, V]
            if top_k is not None and top_k < scores.shape[-1]:
                kth = scores.topk(top_k, dim=-1).values[:, -1:]
                scores = scores.masked_fill(scores < kth, -math.inf)
            probs = torch.softmax(scores, dim=-1)
            token = torch.multinomial(probs.cpu(), 1, generator=generator).to(device)  # [1, 1]
            out.append(int(token))
            hidden, state = self(token, state)
        self.train(was_training)
        return out
