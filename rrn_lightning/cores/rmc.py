"""The Relational Memory Core (RMC) of Santoro et al., "Relational recurrent neural networks" (NeurIPS 2018).

A plain ``nn.Module`` with the semantics and argument names of DeepMind Sonnet v1's ``RelationalMemory``; it knows
nothing of Lightning or data. ``docs/rmc_step.md`` states the step exactly, in numbered steps; in short, at
every time step the projected input rows are appended to the ``mem_slots`` memory rows, all rows attend to each
other with multi-head dot-product attention followed by a shared MLP (post-norm residuals, repeated ``num_blocks``
times), the input rows are dropped again, and LSTM-style input/forget gates mix the result into the old memory.

Shapes: B batch, T time, N = mem_slots, H = num_heads, h = head_size, k = key_size, M = H * h, n = input_rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..common import ConfigurationError, check_positive_ints
from .base import CoreTrace, RecurrentCore
from .compiling import CompiledFunction, CompileMode, check_compile_mode, resolve_mode

__all__ = [
    "BlockWeights",
    "InputWeights",
    "RelationalMemory",
    "StepShape",
    "StepWeights",
    "rmc_step",
    "sonnet_linear_init_",
]

GateStyle = Literal["unit", "memory"] | None
_GATE_STYLES = ("unit", "memory", None)


def sonnet_linear_init_(linear: nn.Linear) -> None:
    """Sonnet's default Linear initialisation: weights ~ N(0, 1/fan_in) truncated at two standard deviations, zero bias."""
    std = 1.0 / math.sqrt(linear.in_features)
    nn.init.trunc_normal_(linear.weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


class AttentionBlock(nn.Module):
    """The parameters one attention block owns: its fused q/k/v projection with one LayerNorm over all q/k/v
    features, and the LayerNorms after the attention and after the (shared) MLP residuals."""

    def __init__(self, mem_size: int, num_heads: int, key_size: int, head_size: int) -> None:
        super().__init__()
        qkv_size = num_heads * (2 * key_size + head_size)
        self.qkv = nn.Linear(mem_size, qkv_size)
        self.qkv_norm = nn.LayerNorm(qkv_size)
        self.attention_norm = nn.LayerNorm(mem_size)
        self.mlp_norm = nn.LayerNorm(mem_size)


class RelationalMemory(RecurrentCore):
    """Relational Memory Core: a recurrent core whose state is ``mem_slots`` memory rows that attend to each other.

    Example::

        core = RelationalMemory(input_size=16, mem_slots=4, head_size=32, num_heads=2)
        xs = torch.randn(8, 10, 16)                 # [B, T, D]
        outs, state = core(xs)                      # outs [8, 10, 4 * 64], state [8, 4, 64]
        out, state = core.step(xs[:, 0], state)     # one step: out [8, 256]

    ``forward`` over a sequence gives what a loop of ``step`` gives. With ``lengths`` (padded batches) a sequence's
    state stops changing at its length, so the returned state is each sequence's state at its true end, and the
    outputs at padded steps are zero (as ``nn.LSTM`` gives for packed sequences).

    After each call, ``last_gates`` holds the last step's ``(input_gate, forget_gate)`` (detached), each
    ``[B, N, M]`` for ``gate_style="unit"`` and ``[B, N, 1]`` for ``"memory"``; ``None`` without gating.

    Args:
        input_size: Features of one input row (D).
        mem_slots: Number of memory rows (N).
        head_size: Size of each attention head's values (h); a memory row has ``num_heads * head_size`` features.
        num_heads: Number of attention heads (H).
        num_blocks: How many times attention and MLP are applied per step; each block has its own attention
            parameters and LayerNorms, the MLP is shared by all blocks (as in Sonnet).
        forget_bias: Added to the forget gate's pre-activation (``+inf`` keeps the memory unchanged).
        input_bias: Added to the input gate's pre-activation.
        gate_style: ``"unit"`` (one gate per memory feature), ``"memory"`` (one scalar gate per slot) or ``None``
            (no gating: the new memory is the attention output itself).
        attention_mlp_layers: Number of Linear(M, M) layers in the MLP after attention (ReLU between them).
        key_size: Size of queries and keys per head (k); defaults to ``head_size``.
        input_rows: Input rows read per step (n). With n > 1, inputs are ``[B, n, D]`` per step (Sonnet's
            ``treat_input_as_matrix``); the gate layer then reads ``n * M`` features, so n is fixed here.
        compile_step: Run the time loop's step under ``torch.compile``: ``False`` (eager, the default), ``True``
            (inductor's ``"default"`` mode) or a ``torch.compile`` mode by name (``"reduce-overhead"`` adds CUDA
            graphs on a GPU). Not an architecture argument: the results are the same within float rounding, and it
            may be changed at any time (``core.compile_step = True``). The first call compiles (tens of seconds on
            a CPU); a new grad mode, dtype, padding or batch size 1 compiles once more, sequence length and other
            batch sizes never do. A compiled step has no double backward. Where compiling fails (no C++ compiler)
            the core runs eagerly after one warning. (Not ``compile``: that is ``nn.Module.compile``, which
            compiles a whole module and stays available.)
    """

    def __init__(
        self,
        input_size: int,
        mem_slots: int,
        head_size: int,
        num_heads: int = 1,
        num_blocks: int = 1,
        forget_bias: float = 1.0,
        input_bias: float = 0.0,
        gate_style: GateStyle = "unit",
        attention_mlp_layers: int = 2,
        key_size: int | None = None,
        input_rows: int = 1,
        compile_step: CompileMode = False,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_positive_ints(
            owner,
            input_size=input_size,
            mem_slots=mem_slots,
            head_size=head_size,
            num_heads=num_heads,
            num_blocks=num_blocks,
            attention_mlp_layers=attention_mlp_layers,
            input_rows=input_rows,
        )
        if key_size is not None:
            check_positive_ints(owner, key_size=key_size)
        if gate_style not in _GATE_STYLES:
            raise ConfigurationError(
                f"{owner}: gate_style must be 'unit', 'memory' or None (no gating), got gate_style={gate_style!r}."
            )
        for name, value in (("forget_bias", forget_bias), ("input_bias", input_bias)):
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                raise ConfigurationError(
                    f"{owner}: {name} must be a number (inf allowed), got {name}={value!r}."
                )

        self.input_size = input_size
        self.mem_slots = mem_slots
        self.head_size = head_size
        self.num_heads = num_heads
        self.num_blocks = num_blocks
        self._forget_bias = float(forget_bias)
        self._input_bias = float(input_bias)
        self.gate_style = gate_style
        self.attention_mlp_layers = attention_mlp_layers
        self.key_size = key_size if key_size is not None else head_size
        self.input_rows = input_rows
        self.mem_size = num_heads * head_size

        M = self.mem_size
        self.input_projection = nn.Linear(input_size, M)
        self.blocks = nn.ModuleList(
            AttentionBlock(M, num_heads, self.key_size, head_size) for _ in range(num_blocks)
        )
        mlp: list[nn.Module] = []
        for i in range(attention_mlp_layers):
            if i > 0:
                mlp.append(nn.ReLU())
            mlp.append(nn.Linear(M, M))
        self.mlp = nn.Sequential(*mlp)
        gate_size = {"unit": M, "memory": 1, None: 0}[gate_style]
        self.gate_size = gate_size
        if gate_size:
            self.gate_input = nn.Linear(input_rows * M, 2 * gate_size)
            self.gate_memory = nn.Linear(M, 2 * gate_size)
        self._scale = self.key_size**-0.5
        self.compile_step = compile_step  # checked by the property's setter
        self.last_gates: tuple[Tensor, Tensor] | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Sonnet's initialisation: truncated-normal Linear weights, zero biases, LayerNorm scale 1 and offset 0."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                sonnet_linear_init_(module)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()

    @property
    def forget_bias(self) -> float:
        return self._forget_bias

    @forget_bias.setter
    def forget_bias(self, value: float) -> None:
        self._forget_bias = float(value)

    @property
    def input_bias(self) -> float:
        return self._input_bias

    @input_bias.setter
    def input_bias(self, value: float) -> None:
        self._input_bias = float(value)

    @property
    def compile_step(self) -> CompileMode:
        """Whether the time loop's step runs under ``torch.compile``, and in which mode (see the class docstring)."""
        return self._compile_step

    @compile_step.setter
    def compile_step(self, value: CompileMode) -> None:
        self._compile_step = check_compile_mode(type(self).__name__, value)

    @property
    def init_kwargs(self) -> dict:
        """The constructor arguments that build a core of the same shape and behaviour."""
        names = (
            "input_size",
            "mem_slots",
            "head_size",
            "num_heads",
            "num_blocks",
            "forget_bias",
            "input_bias",
            "gate_style",
            "attention_mlp_layers",
            "key_size",
            "input_rows",
        )
        return {name: getattr(self, name) for name in names}

    @property
    def output_size(self) -> int:
        """Features of one output step: ``mem_slots * num_heads * head_size``."""
        return self.mem_slots * self.mem_size

    @property
    def state_shape(self) -> tuple[int, int]:
        """Shape of the state without the batch: ``(mem_slots, num_heads * head_size)``."""
        return (self.mem_slots, self.mem_size)

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, mem_slots={self.mem_slots}, head_size={self.head_size}, "
            f"num_heads={self.num_heads}, num_blocks={self.num_blocks}, key_size={self.key_size}, "
            f"gate_style={self.gate_style!r}, forget_bias={self.forget_bias}, input_bias={self.input_bias}, "
            f"input_rows={self.input_rows}"
        )

    def initial_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """Identity memory: slot i is the i-th unit vector, zero-padded (or cut) to ``num_heads * head_size``.

        Returns ``[batch_size, mem_slots, num_heads * head_size]``.
        """
        check_positive_ints(f"{type(self).__name__}.initial_state", batch_size=batch_size)
        N, M = self.mem_slots, self.mem_size
        eye = torch.eye(N, max(N, M), device=device, dtype=dtype)[:, :M]  # [N, M]
        return eye.expand(batch_size, N, M).clone()  # [B, N, M]

    # ------------------------------------------------------------------ checks
    def _check_state(self, where: str, state: Tensor, batch_size: int) -> None:
        expected = (batch_size, *self.state_shape)
        if not isinstance(state, Tensor) or tuple(state.shape) != expected:
            got = tuple(state.shape) if isinstance(state, Tensor) else type(state).__name__
            raise ValueError(
                f"RelationalMemory.{where}: state must have shape [batch, mem_slots, num_heads * head_size] = "
                f"{list(expected)}, got {got}. Use core.initial_state(batch_size) for a fresh state."
            )

    # ------------------------------------------------------------------ computation
    # Everything that depends only on the input runs once for the whole sequence (``_precompute``); the time loop
    # calls ``rmc_step``, the one place the step's math is written, which does only the work that needs the previous
    # memory, and in the last block only for the memory rows, since the input rows are dropped at the end of the
    # step (docs/rmc_step.md, step 4). The weights are cast to the compute dtype once per call (``_weights``), not at every
    # step, and the loop runs with autocast off: the casts are explicit, so the step means the same eagerly and
    # compiled, and LayerNorm, softmax and the gates stay float32 under bf16/fp16 autocast.
    def _dtypes(self, device: torch.device) -> tuple[torch.dtype, torch.dtype]:
        """(compute, statistics) dtypes: matrix products in the autocast dtype under autocast (else the weights'
        dtype); LayerNorm, softmax and gates in at least float32."""
        compute = self.input_projection.weight.dtype
        if compute == torch.float32 and torch.is_autocast_enabled(device.type):
            compute = torch.get_autocast_dtype(device.type)
        return compute, torch.promote_types(compute, torch.float32)

    def _weights(self, compute: torch.dtype, stats: torch.dtype) -> tuple[StepWeights, InputWeights]:
        """The step's weights cast once (a no-op without autocast), and those of the input-only work."""

        def linear(layer: nn.Linear) -> tuple[Tensor, Tensor]:
            return layer.weight.to(compute), layer.bias.to(compute)

        def norm(layer: nn.LayerNorm) -> tuple[Tensor, Tensor]:
            return layer.weight.to(stats), layer.bias.to(stats)

        blocks = tuple(
            BlockWeights(linear(b.qkv), norm(b.qkv_norm), norm(b.attention_norm), norm(b.mlp_norm))
            for b in self.blocks
        )
        mlp = tuple(linear(layer) for layer in self.mlp if isinstance(layer, nn.Linear))
        gate_memory = linear(self.gate_memory) if self.gate_size else None
        inputs = InputWeights(
            linear(self.input_projection), linear(self.gate_input) if self.gate_size else None
        )
        return StepWeights(blocks, mlp, gate_memory), inputs

    def _shape(self, compute: torch.dtype, stats: torch.dtype) -> StepShape:
        return StepShape(
            mem_slots=self.mem_slots,
            num_heads=self.num_heads,
            key_size=self.key_size,
            head_size=self.head_size,
            scale=self._scale,
            eps=tuple((b.qkv_norm.eps, b.attention_norm.eps, b.mlp_norm.eps) for b in self.blocks),
            compute=compute,
            stats=stats,
        )

    def _precompute(
        self,
        x: Tensor,
        shape: StepShape,
        weights: StepWeights,
        inputs: InputWeights,
        dtype: torch.dtype,
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """x [..., (n,) D] -> projected rows [..., n, M], the gates' input part [..., 2G] with the gate biases
        added (in the statistics dtype, as exact values), and block 1's normalised q/k/v of the input rows
        [..., n, H*(2k+h)]; ``dtype`` is the memory's (the residual stream's)."""
        compute, stats = shape.compute, shape.stats
        rows = F.linear(x.to(compute), *inputs.projection)
        if self.input_rows == 1:
            rows = rows.unsqueeze(-2)  # [..., 1, M]
        gate_in = None
        if inputs.gate is not None:
            G = self.gate_size
            part = F.linear(rows.flatten(-2), *inputs.gate).to(stats)  # [..., 2G]
            gate_in = torch.cat([part[..., :G] + self._input_bias, part[..., G:] + self._forget_bias], dim=-1)
        first = weights.blocks[0]
        qkv_in = _norm(F.linear(rows, *first.qkv), first.qkv_norm, shape.eps[0][0], dtype)
        return rows.to(dtype), gate_in, qkv_in

    def _run(
        self,
        xs: Tensor,
        memory: Tensor,
        mask: Tensor | None,
        return_attention: bool,
        leading: int,
        eager: bool = False,
    ):
        """The time loop over ``xs`` ([B, T, ...] when ``leading`` is 2, one step [B, ...] when 1); ``eager`` runs
        the step uncompiled whatever ``compile_step`` says."""
        device = memory.device
        compute, stats = self._dtypes(device)
        shape = self._shape(compute, stats)
        mode = None if eager else resolve_mode(self.compile_step, device)
        weights, inputs = self._weights(compute, stats)
        trains = torch.is_grad_enabled() and weights.blocks[0].qkv[0].requires_grad
        if mode is not None and trains and not memory.requires_grad and not memory.is_inference():
            # A compiled graph is specialised on whether each input requires grad: a state without grad (a fresh
            # or carried one) entering the first step would compile a second graph for that step alone. Asking for
            # its (unused) gradient keeps one graph per training setting, at the cost of one [B, N, M] product.
            memory = memory.detach().requires_grad_()
        with torch.autocast(device.type, enabled=False):
            rows, gate_in, qkv_in = self._precompute(xs, shape, weights, inputs, memory.dtype)
            if leading == 1:
                steps = [(rows, gate_in, qkv_in, None)]
            else:
                # unbind, not rows[:, t]: one backward node for all steps instead of a full-size zero gradient
                # each. For a compiled step, time-major and contiguous first, so that a step's slices have the
                # same strides whatever T is (it would otherwise recompile for each new length); eagerly the
                # copy would only cost memory.
                T = rows.shape[1]

                def by_step(t: Tensor | None) -> list:
                    if t is None:
                        return [None] * T
                    return t.unbind(1) if mode is None else t.transpose(0, 1).contiguous().unbind(0)

                steps = zip(by_step(rows), by_step(gate_in), by_step(qkv_in), by_step(mask), strict=True)
            outputs, attentions, gates = [], [], None
            for rows_t, gate_t, qkv_t, keep_t in steps:
                memory, gates, attention = _STEP(
                    mode,
                    shape=shape,
                    memory=memory,
                    rows=rows_t,
                    gate_in=gate_t,
                    qkv_in=qkv_t,
                    keep=keep_t,
                    weights=weights,
                    keep_attention=return_attention,
                )
                outputs.append(memory.flatten(1))  # [B, N*M]
                attentions.append(attention)
        self.last_gates = None if gates is None else (gates[0].detach(), gates[1].detach())
        return outputs, memory, attentions

    def step(self, x: Tensor, state: Tensor, return_attention: bool = False):
        """One time step.

        Args:
            x: ``[B, D]``, or ``[B, n, D]`` when ``input_rows = n > 1``.
            state: ``[B, N, M]``, e.g. from ``initial_state(B)``.
            return_attention: Also return the memory rows' attention weights ``[B, num_blocks, H, N, N+n]``
                (over the N memory rows, then the n input rows).

        Returns:
            ``(output [B, N*M], new_state [B, N, M])``, plus the attention weights when asked for.
        """
        self._check_inputs("step", x, leading=1)
        self._check_state("step", state, x.shape[0])
        outputs, new, attentions = self._run(x, state, None, return_attention, leading=1)
        return (outputs[0], new, attentions[0]) if return_attention else (outputs[0], new)

    def forward(
        self,
        xs: Tensor,
        state: Tensor | None = None,
        lengths: Tensor | None = None,
        return_attention: bool = False,
    ):
        """Run over a batch-first sequence.

        Args:
            xs: ``[B, T, D]``, or ``[B, T, n, D]`` when ``input_rows = n > 1``.
            state: initial state ``[B, N, M]``; ``initial_state(B)`` when omitted.
            lengths: optional ``[B]`` integer lengths (0..T) for padded batches.
            return_attention: Also return the memory rows' attention weights ``[B, T, num_blocks, H, N, N+n]``.

        Returns:
            ``(outputs [B, T, N*M], final_state [B, N, M])``, plus the attention weights when asked for.
        """
        self._check_inputs("forward", xs, leading=2)
        B, T = xs.shape[:2]
        if state is None:
            state = self.initial_state(B, device=xs.device, dtype=self.input_projection.weight.dtype)
        self._check_state("forward", state, B)
        mask = None  # [B, T]: True at real (not padded) steps
        if lengths is not None:
            mask = self._length_mask(lengths, B, T, xs.device)
        outputs, memory, attentions = self._run(xs, state, mask, return_attention, leading=2)
        outputs = torch.stack(outputs, dim=1)  # [B, T, N*M]
        if mask is not None:
            outputs = outputs.masked_fill(~mask[:, :, None], 0.0)
        if return_attention:
            return outputs, memory, torch.stack(attentions, dim=1)  # [B, T, blocks, H, N, N+n]
        return outputs, memory

    @torch.no_grad()
    def trace(self, xs: Tensor, state: Tensor | None = None, lengths: Tensor | None = None) -> CoreTrace:
        """``forward`` one step at a time, keeping every step's attention weights and gates (``CoreTrace``): for
        looking inside the memory (TensorBoard's attention maps and gate histograms), not for training."""
        self._check_inputs("trace", xs, leading=2)
        B, T = xs.shape[:2]
        if state is None:
            state = self.initial_state(B, device=xs.device, dtype=self.input_projection.weight.dtype)
        self._check_state("trace", state, B)
        mask = self._real_steps(lengths, B, T, xs.device)
        outputs, attentions, gates = [], [], {"input": [], "forget": []}
        for t in range(T):
            # Eagerly: a compiled step would compile a graph of its own for this rare call.
            (output,), new, (attention,) = self._run(xs[:, t], state, None, True, leading=1, eager=True)
            keep = mask[:, t, None, None]
            state = torch.where(keep, new, state)  # a padded step keeps the state, as forward does
            outputs.append(output.masked_fill(~mask[:, t, None], 0.0))
            attentions.append(attention)
            if self.last_gates is not None:
                gates["input"].append(self.last_gates[0])
                gates["forget"].append(self.last_gates[1])
        return CoreTrace(
            outputs=torch.stack(outputs, dim=1).float(),
            mask=mask,
            attention=torch.stack(attentions, dim=1).float(),
            gates={name: torch.stack(steps, dim=1).float() for name, steps in gates.items() if steps},
        )


@dataclass(frozen=True)
class StepShape:
    """What ``rmc_step`` needs besides tensors: the sizes, the attention scale, LayerNorm epsilons by block, and the
    dtypes of matrix products (``compute``) and of LayerNorm, softmax and gate statistics (``stats``)."""

    mem_slots: int
    num_heads: int
    key_size: int
    head_size: int
    scale: float
    eps: tuple[tuple[float, float, float], ...]
    compute: torch.dtype
    stats: torch.dtype


class BlockWeights(NamedTuple):
    """One attention block's weights, already cast, each a ``(weight, bias)`` pair: the q/k/v projection (compute
    dtype) and its three LayerNorms (statistics dtype)."""

    qkv: tuple[Tensor, Tensor]
    qkv_norm: tuple[Tensor, Tensor]
    attention_norm: tuple[Tensor, Tensor]
    mlp_norm: tuple[Tensor, Tensor]


class StepWeights(NamedTuple):
    """The weights ``rmc_step`` reads, already cast: each block's, the shared MLP's ``(weight, bias)`` by layer,
    and the gate layer on the memory ``(weight, bias)``, or None without gating."""

    blocks: tuple[BlockWeights, ...]
    mlp: tuple[tuple[Tensor, Tensor], ...]
    gate_memory: tuple[Tensor, Tensor] | None


class InputWeights(NamedTuple):
    """The weights of the input-only work before the time loop, already cast: the input projection and the input
    half of the gates (None without gating), each ``(weight, bias)``."""

    projection: tuple[Tensor, Tensor]
    gate: tuple[Tensor, Tensor] | None


def rmc_step(
    shape: StepShape,
    memory: Tensor,
    rows: Tensor,
    gate_in: Tensor | None,
    qkv_in: Tensor,
    keep: Tensor | None,
    weights: StepWeights,
    keep_attention: bool = False,
) -> tuple[Tensor, tuple[Tensor, Tensor] | None, Tensor | None]:
    """One RMC step (docs/rmc_step.md, steps 2-6), given what ``_precompute`` made of this step's input.

    Args:
        memory: ``[B, N, M]``; its dtype is the residual stream's.
        rows: the projected input rows ``[B, n, M]``.
        gate_in: the gates' input part ``[B, 2G]``, biases included; None without gating.
        qkv_in: block 1's normalised q/k/v of the input rows ``[B, n, H*(2k+h)]``.
        keep: ``[B]`` bool, False where this step is padding (the memory passes unchanged); None: all real.
        keep_attention: also return the memory rows' attention weights ``[B, blocks, H, N, N+n]``.

    Returns:
        ``(new memory [B, N, M], (input_gate, forget_gate) or None, attention or None)``.
    """
    B, N = memory.shape[0], shape.mem_slots
    H, k, h = shape.num_heads, shape.key_size, shape.head_size
    M, R = H * h, N + rows.shape[1]
    compute, dtype = shape.compute, memory.dtype
    x_mem, x_in = memory, rows  # the memory rows and the input rows entering each block
    kept = []
    for i, block in enumerate(weights.blocks):
        last = i == len(weights.blocks) - 1
        qkv_eps, attention_eps, mlp_eps = shape.eps[i]
        qkv_mem = _norm(F.linear(x_mem.to(compute), *block.qkv), block.qkv_norm, qkv_eps, dtype)  # [B, N, F]
        if i > 0:
            # [B, n, F]
            qkv_in = _norm(F.linear(x_in.to(compute), *block.qkv), block.qkv_norm, qkv_eps, dtype)
        qkv = torch.cat([qkv_mem, qkv_in], dim=1).view(B, R, H, 2 * k + h).transpose(1, 2)  # [B, H, R, 2k+h]
        q, key, v = qkv.to(compute).split([k, k, h], dim=-1)
        if last:
            q = q[:, :, :N]  # [B, H, N, k]: only the memory rows' outputs survive the step
        # Plain attention (not scaled_dot_product_attention, whose CPU kernel has no double backward).
        scores = torch.matmul(q, key.transpose(-1, -2)) * shape.scale  # [B, H, Q, R]
        w = torch.softmax(scores, dim=-1, dtype=shape.stats)
        if keep_attention:
            kept.append(w[:, :, :N])
        att = torch.matmul(w.to(compute), v)  # [B, H, Q, h]
        att = att.transpose(1, 2).reshape(B, q.shape[2], M)  # [B, Q, M]
        if last:
            x_mem = _norm(x_mem + att, block.attention_norm, attention_eps, dtype)
            x_mem = _norm(_mlp(x_mem, weights.mlp, compute) + x_mem, block.mlp_norm, mlp_eps, dtype)
        else:
            # [B, R, M]
            x = _norm(torch.cat([x_mem, x_in], dim=1) + att, block.attention_norm, attention_eps, dtype)
            x = _norm(_mlp(x, weights.mlp, compute) + x, block.mlp_norm, mlp_eps, dtype)
            x_mem, x_in = x[:, :N], x[:, N:]
    new, gates = x_mem, None  # [B, N, M]
    if gate_in is not None:
        gate_w, gate_b = weights.gate_memory
        g = F.linear(torch.tanh(memory).to(compute), gate_w, gate_b).to(gate_in.dtype) + gate_in.unsqueeze(1)
        input_gate, forget_gate = torch.sigmoid(g).chunk(2, dim=-1)  # [B, N, G] each
        new = torch.addcmul(forget_gate * memory, input_gate, torch.tanh(new)).to(dtype)
        gates = (input_gate, forget_gate)
    if keep is not None:
        new = torch.where(keep[:, None, None], new, memory)
    return new, gates, torch.stack(kept, dim=1) if keep_attention else None


def _norm(x: Tensor, norm: tuple[Tensor, Tensor], eps: float, dtype: torch.dtype) -> Tensor:
    """LayerNorm over the last axis with ``norm = (weight, bias)``, in their (statistics) dtype; the result in
    ``dtype``."""
    weight, bias = norm
    return F.layer_norm(x.to(weight.dtype), x.shape[-1:], weight, bias, eps).to(dtype)


def _mlp(x: Tensor, layers: tuple[tuple[Tensor, Tensor], ...], compute: torch.dtype) -> Tensor:
    """The attention MLP: Linear layers with ReLU between them (none after the last), in the compute dtype."""
    x = x.to(compute)
    for i, (weight, bias) in enumerate(layers):
        if i > 0:
            x = torch.relu(x)
        x = F.linear(x, weight, bias)
    return x


_STEP = CompiledFunction(rmc_step, "RMC step")
