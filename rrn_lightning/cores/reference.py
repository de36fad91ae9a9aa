"""A plain, deliberately unoptimised reference of the RMC step, written straight from the numbered steps of
``docs/rmc_step.md``, under the same numbers.

This is the one reference the repository keeps: the equivalence tests compare ``RelationalMemory`` against it
(with copied weights), and the speed benchmark takes its ratios against it. It does every step per time step,
with one fused q/k/v Linear per block and attention, MLP and LayerNorms over all N + n rows, so keep it plain:
its value is that a reader can check it line by line against the semantics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .rmc import RelationalMemory

__all__ = ["ReferenceRelationalMemory"]


class ReferenceRelationalMemory(nn.Module):
    """The RMC step of ``docs/rmc_step.md``, computed literally. Same constructor and parameter names as ``RelationalMemory``,
    so ``ReferenceRelationalMemory.from_core(core)`` holds exactly the weights of ``core``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()
        # Borrow the parameter layout (and argument checks) of the real core; none of its methods are used.
        self.params = RelationalMemory(*args, **kwargs)

    @classmethod
    def from_core(cls, core: RelationalMemory) -> ReferenceRelationalMemory:
        weight = core.input_projection.weight
        ref = cls(**core.init_kwargs).to(device=weight.device, dtype=weight.dtype)
        ref.params.load_state_dict(core.state_dict())
        return ref

    def initial_state(self, batch_size: int, **kwargs) -> Tensor:
        return self.params.initial_state(batch_size, **kwargs)

    def step(self, x: Tensor, memory: Tensor) -> tuple[Tensor, Tensor]:
        p = self.params
        B = x.shape[0]
        N, H, k, h, M = p.mem_slots, p.num_heads, p.key_size, p.head_size, p.mem_size

        # 1. Input projection: [B, D] -> [B, 1, M], or [B, n, D] -> [B, n, M].
        x = x.reshape(B, p.input_rows, p.input_size)
        inputs = F.linear(x, p.input_projection.weight, p.input_projection.bias)  # [B, n, M]
        # 2. Memory and input rows together.
        m = torch.cat([memory, inputs], dim=1)  # [B, N+n, M]
        R = m.shape[1]
        self.last_attention = []  # per block: [B, H, R, R], for the tests
        # 3. Blocks: own q/k/v Linear and LayerNorms, one shared MLP.
        for block in p.blocks:
            qkv = F.linear(m, block.qkv.weight, block.qkv.bias)
            qkv = F.layer_norm(
                qkv, qkv.shape[-1:], block.qkv_norm.weight, block.qkv_norm.bias, block.qkv_norm.eps
            )
            qkv = qkv.reshape(B, R, H, 2 * k + h).permute(0, 2, 1, 3)  # [B, H, R, 2k+h]
            q, key, v = qkv[..., :k], qkv[..., k : 2 * k], qkv[..., 2 * k :]
            q = q * k**-0.5
            weights = torch.softmax(torch.einsum("bhik,bhjk->bhij", q, key), dim=-1)  # [B, H, R, R]
            self.last_attention.append(weights)
            att = torch.einsum("bhij,bhjv->bhiv", weights, v)  # [B, H, R, h]
            att = att.permute(0, 2, 1, 3).reshape(B, R, M)  # [B, R, M]
            m = F.layer_norm(m + att, (M,), block.attention_norm.weight, block.attention_norm.bias)
            hidden = m
            for i, layer in enumerate(mod for mod in p.mlp if isinstance(mod, nn.Linear)):
                if i > 0:
                    hidden = torch.relu(hidden)
                hidden = F.linear(hidden, layer.weight, layer.bias)
            m = F.layer_norm(hidden + m, (M,), block.mlp_norm.weight, block.mlp_norm.bias)
        # 4. Drop the input rows.
        new = m[:, :N]  # [B, N, M]
        # 5. Gates from the projected input (broadcast over slots) and tanh of the old memory.
        if p.gate_style is not None:
            gates = F.linear(inputs.reshape(B, -1), p.gate_input.weight, p.gate_input.bias)[:, None, :]
            gates = gates + F.linear(
                torch.tanh(memory), p.gate_memory.weight, p.gate_memory.bias
            )  # [B, N, 2G]
            G = gates.shape[-1] // 2
            input_gate = torch.sigmoid(gates[..., :G] + p.input_bias)
            forget_gate = torch.sigmoid(gates[..., G:] + p.forget_bias)
            new = input_gate * torch.tanh(new) + forget_gate * memory
        # 6. Output is the flattened new memory.
        return new.reshape(B, N * M), new

    def forward(self, xs: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        memory = self.initial_state(xs.shape[0], device=xs.device, dtype=xs.dtype) if state is None else state
        outputs = []
        for t in range(xs.shape[1]):
            out, memory = self.step(xs[:, t], memory)
            outputs.append(out)
        return torch.stack(outputs, dim=1), memory
