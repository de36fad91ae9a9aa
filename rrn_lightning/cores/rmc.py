"""The Relational Memory Core (RMC) of Santoro et al., "Relational recurrent neural networks" (NeurIPS 2018).

A plain ``nn.Module`` with the semantics and argument names of DeepMind Sonnet v1's ``RelationalMemory``; it knows
nothing of Lightning or data. ``../shared/DESIGN.md`` (in the repository) states the step exactly; in short, at
every time step the projected input rows are appended to the ``mem_slots`` memory rows, all rows attend to each
other with multi-head dot-product attention followed by a shared MLP (post-norm residuals, repeated ``num_blocks``
times), the input rows are dropped again, and LSTM-style input/forget gates mix the result into the old memory.

Shapes: B batch, T time, N = mem_slots, H = num_heads, h = head_size, k = key_size, M = H * h, n = input_rows.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import ConfigurationError, check_positive_ints
from . import _fused
from .base import RecurrentCore

__all__ = ["RelationalMemory", "sonnet_linear_init_"]

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
        # The gate biases, added once to the input part of the gates (non-persistent: not a parameter).
        self.register_buffer("gate_bias", torch.zeros(2 * gate_size), persistent=False)
        self._update_gate_bias()
        self._scale = self.key_size**-0.5
        self.last_gates: tuple[Tensor, Tensor] | None = None
        # Which time loop ``forward`` runs: the fused one (one autograd node, hand-written backward) when True,
        # step by step through autograd when False (attention weights and double backward need it), and when
        # None the fused one for sequences of at least ``_FUSED_MIN_STEPS`` steps, where it is the faster.
        self.fused: bool | None = None
        self._saved_bytes = 0
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
        self._update_gate_bias()

    @property
    def input_bias(self) -> float:
        return self._input_bias

    @input_bias.setter
    def input_bias(self, value: float) -> None:
        self._input_bias = float(value)
        self._update_gate_bias()

    def _update_gate_bias(self) -> None:
        G = self.gate_size
        with torch.no_grad():
            self.gate_bias[:G] = self._input_bias
            self.gate_bias[G:] = self._forget_bias

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
    # The fast path. Everything that depends only on the input runs once for the whole sequence
    # (``_precompute``); the time loop (``_step``) does only the work that needs the previous memory, and in the
    # last block only for the memory rows, since the input rows are dropped at the end of the step (DESIGN.md,
    # step 4). LayerNorm and softmax run in float32 under autocast; the memory state stays float32.
    def _precompute(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """x [..., (n,) D] -> projected rows [..., n, M], gate input part [..., 2G] with the gate biases added,
        and block 1's normalised q/k/v of the input rows [..., n, H*(2k+h)]."""
        rows = self.input_projection(x)
        if self.input_rows == 1:
            rows = rows.unsqueeze(-2)  # [..., 1, M]
        gate_in = None
        if self.gate_size:
            gate_in = self.gate_input(rows.flatten(-2))  # [..., 2G]
            gate_in = gate_in.to(_stat_dtype(gate_in)) + self.gate_bias
        first = self.blocks[0]
        qkv_in = _layer_norm(first.qkv_norm, first.qkv(rows))  # [..., n, F]
        return rows, gate_in, qkv_in

    def _step(
        self, memory: Tensor, rows: Tensor, gate_in: Tensor | None, qkv_in: Tensor, keep_attention: bool
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None, Tensor | None]:
        """memory [B, N, M] and this step's precomputed input parts -> new memory [B, N, M], gates, attention."""
        B, N = memory.shape[0], self.mem_slots
        H, k, h, M = self.num_heads, self.key_size, self.head_size, self.mem_size
        R = N + rows.shape[1]
        x_mem, x_in = memory, rows  # the memory rows and the input rows entering each block
        weights = []
        for i, block in enumerate(self.blocks):
            last = i == self.num_blocks - 1
            qkv_mem = _layer_norm(block.qkv_norm, block.qkv(x_mem))  # [B, N, F]
            if i == 0:
                qkv_inp = qkv_in  # [B, n, F], computed before the time loop
            else:
                qkv_inp = _layer_norm(block.qkv_norm, block.qkv(x_in))  # [B, n, F]
            qkv = torch.cat([qkv_mem, qkv_inp], dim=1)  # [B, R, F]
            qkv = qkv.view(B, R, H, 2 * k + h).transpose(1, 2)  # [B, H, R, 2k+h]
            q, key, v = qkv.split([k, k, h], dim=-1)
            if last:
                q = q[:, :, :N]  # [B, H, N, k]: only the memory rows' outputs survive the step
            # Plain attention (not scaled_dot_product_attention, whose CPU kernel has no double backward).
            scores = torch.matmul(q, key.transpose(-1, -2)) * self._scale  # [B, H, Q, R]
            w = torch.softmax(scores, dim=-1, dtype=_stat_dtype(scores))
            att = torch.matmul(w.to(v.dtype), v)  # [B, H, Q, h]
            if keep_attention:
                weights.append(w[:, :, :N])
            att = att.transpose(1, 2).reshape(B, q.shape[2], M)  # [B, Q, M]
            if last:
                x_mem = _layer_norm(block.attention_norm, x_mem + att)
                x_mem = _layer_norm(block.mlp_norm, self.mlp(x_mem) + x_mem)
            else:
                x = _layer_norm(block.attention_norm, torch.cat([x_mem, x_in], dim=1) + att)  # [B, R, M]
                x = _layer_norm(block.mlp_norm, self.mlp(x) + x)
                x_mem, x_in = x[:, :N], x[:, N:]
        new = x_mem  # [B, N, M]
        gates = None
        if gate_in is not None:
            g = self.gate_memory(torch.tanh(memory)).to(gate_in.dtype)
            g = g + gate_in.unsqueeze(1)  # [B, N, 2G], biases included
            input_gate, forget_gate = torch.sigmoid(g).chunk(2, dim=-1)  # [B, N, G] each
            new = torch.addcmul(forget_gate * memory, input_gate, torch.tanh(new)).to(memory.dtype)
            gates = (input_gate, forget_gate)
        attention = torch.stack(weights, dim=1) if keep_attention else None  # [B, blocks, H, N, N+n]
        return new, gates, attention

    def _stepwise_loop(self, memory, rows, qkv_in, gate_in, mask, return_attention):
        """The time loop through autograd, one ``_step`` at a time (attention weights, higher-order gradients)."""
        T = qkv_in.shape[1]
        # unbind, not rows[:, t]: one backward node for all steps instead of a full-size zero gradient per step.
        rows, qkv_in = rows.unbind(1), qkv_in.unbind(1)
        gate_in = [None] * T if gate_in is None else gate_in.unbind(1)
        outputs, attentions, gates = [], [], None
        for t in range(T):
            new, gates, attention = self._step(memory, rows[t], gate_in[t], qkv_in[t], return_attention)
            if mask is not None:
                new = torch.where(mask[:, t, None, None], new, memory)
            memory = new
            outputs.append(new.flatten(1))  # [B, N*M]
            attentions.append(attention)
        self._store_gates(gates)
        attentions = torch.stack(attentions, dim=1) if return_attention else None  # [B, T, blocks, H, N, N+n]
        return torch.stack(outputs, dim=1), memory, attentions

    def _fused_plan(self, device: torch.device) -> _fused.Plan:
        weight_dtype = self.input_projection.weight.dtype
        compute = weight_dtype
        if torch.is_autocast_enabled(device.type) and weight_dtype == torch.float32:
            compute = torch.get_autocast_dtype(device.type)
        eps = tuple(
            (block.qkv_norm.eps, block.attention_norm.eps, block.mlp_norm.eps) for block in self.blocks
        )
        return _fused.Plan(
            N=self.mem_slots,
            n=self.input_rows,
            H=self.num_heads,
            k=self.key_size,
            h=self.head_size,
            G=self.gate_size,
            mlp_layers=self.attention_mlp_layers,
            num_blocks=self.num_blocks,
            scale=self._scale,
            eps=eps,
            compute=compute,
            stats=_stat_dtype(torch.empty((), dtype=compute)),
        )

    def _fused_params(self) -> list[Tensor]:
        """The parameters of the time loop, in the order ``_fused`` reads them."""
        params: list[Tensor] = []
        for block in self.blocks:
            for module in (block.qkv, block.qkv_norm, block.attention_norm, block.mlp_norm):
                params += [module.weight, module.bias]
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                params += [layer.weight, layer.bias]
        if self.gate_size:
            params += [self.gate_memory.weight, self.gate_memory.bias]
        return params

    def _fused_loop(self, memory, rows, qkv_in, gate_in, mask):
        """The time loop as one autograd node with a hand-written backward (``_fused.py``)."""
        B, T = qkv_in.shape[:2]
        plan = self._fused_plan(memory.device)
        params = self._fused_params()
        sink: dict = {}
        tensors = (memory, rows, qkv_in, gate_in, *params)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
            memories, final = _fused.FusedSequence.apply(
                plan, sink, memory, rows, qkv_in, gate_in, mask, *params
            )
        else:
            with torch.autocast(memory.device.type, enabled=False):
                weights = _fused.Weights(plan, params)
                memories = _fused.run_forward(plan, memory, rows, qkv_in, gate_in, mask, weights, None, sink)
            final = memories[-1]
        self._saved_bytes = sink.get("saved_bytes", 0)  # read by benchmarks/speed.py
        gates = sink["gates"]
        G = self.gate_size
        self._store_gates(None if gates is None else (gates[..., :G], gates[..., G:]))
        outputs = memories.permute(1, 0, 2, 3).reshape(B, T, self.output_size)  # [B, T, N*M]
        return outputs, final

    def _store_gates(self, gates: tuple[Tensor, Tensor] | None) -> None:
        self.last_gates = None if gates is None else (gates[0].detach(), gates[1].detach())

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
        new, gates, attention = self._step(state, *self._precompute(x), return_attention)
        self._store_gates(gates)
        out = new.flatten(1)  # [B, N*M]
        return (out, new, attention) if return_attention else (out, new)

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

        rows, gate_in, qkv_in = self._precompute(xs)  # [B, T, n, M], [B, T, 2G], [B, T, n, F]
        fused = self.fused if self.fused is not None else T >= _FUSED_MIN_STEPS
        self._saved_bytes = 0
        if fused and not return_attention and not torch.compiler.is_compiling():
            outputs, memory = self._fused_loop(state, rows, qkv_in, gate_in, mask)
        else:
            outputs, memory, attentions = self._stepwise_loop(
                state, rows, qkv_in, gate_in, mask, return_attention
            )
        if mask is not None:
            outputs = outputs.masked_fill(~mask[:, :, None], 0.0)
        if return_attention:
            return outputs, memory, attentions  # attentions [B, T, blocks, H, N, N+n]
        return outputs, memory


# The fused loop has per-sequence costs (buffers, batched weight gradients) that pay off over long sequences; on 2
# CPU threads it was 3-30% faster than the step-by-step path at 64 and 100 steps (benchmarks/speed.py `default`,
# `lm`) but slower at 4 and 8 (`nth`: 2.1 s vs 2.3-4.7 s per training step).
_FUSED_MIN_STEPS = 16


def _stat_dtype(x: Tensor) -> torch.dtype:
    """float32 for statistics of half-precision tensors (float64 stays float64)."""
    return torch.promote_types(x.dtype, torch.float32)


def _layer_norm(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    """LayerNorm with float32 statistics. Under autocast (which on CPU would run it in bfloat16) the result stays
    float32, keeping the residual stream and the memory in float32; otherwise it has the input's dtype."""
    dtype = _stat_dtype(x)
    out = F.layer_norm(
        x.to(dtype), norm.normalized_shape, norm.weight.to(dtype), norm.bias.to(dtype), norm.eps
    )
    return out if torch.is_autocast_enabled(x.device.type) else out.to(x.dtype)
