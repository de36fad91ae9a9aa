"""The RMC's time loop as one autograd node: a forward without autograd bookkeeping and a hand-written backward.

Autograd would record some forty nodes per time step and differentiate every small per-step matrix product on its
own. Here the forward loop runs with autograd off and keeps what the backward needs in tensors preallocated for the
whole sequence, so that the backward loop does only the per-step work that depends on the next step's gradient
(input gradients), and every weight gradient - of the q/k/v projections, the MLP, the memory half of the gates and
the LayerNorms - is one large product or reduction over all steps at the end.

The arithmetic is DESIGN.md's step (see ``memory.py``); ``tests/test_memory.py`` checks outputs, final state and
every gradient against the plain reference. Matrix products run in the compute dtype (the autocast dtype under
autocast, else the parameters' dtype); LayerNorm, softmax, the residual stream and the gates in the statistics
dtype (float32 for half-precision compute); the memory keeps the initial state's dtype. Gradients through this node
are first order only (``create_graph=True`` raises); the step-by-step path supports higher orders.

Shapes: B batch, T time, N memory rows, n input rows, R = N + n, H heads, k key size, h head size, M = H * h,
F = H * (2k + h) (q/k/v features), G gate size, L MLP layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

_layer_norm_backward = torch.ops.aten.native_layer_norm_backward.default
_softmax_backward = torch.ops.aten._softmax_backward_data.default
_sigmoid_backward = torch.ops.aten.sigmoid_backward.default
_tanh_backward = torch.ops.aten.tanh_backward.default
_relu_backward = torch.ops.aten.threshold_backward.default


@dataclass(frozen=True)
class Plan:
    """Sizes and dtypes of one fused run (everything the loops need that is not a tensor)."""

    N: int
    n: int
    H: int
    k: int
    h: int
    G: int
    mlp_layers: int
    num_blocks: int
    scale: float
    eps: tuple[tuple[float, float, float], ...]  # per block: q/k/v, attention and MLP LayerNorms
    compute: torch.dtype
    stats: torch.dtype

    @property
    def R(self) -> int:
        return self.N + self.n

    @property
    def M(self) -> int:
        return self.H * self.h

    @property
    def F(self) -> int:
        return self.H * (2 * self.k + self.h)

    def rows_in(self, block: int) -> int:
        """Rows whose q/k/v the loop computes in a block (the input rows' come precomputed in block 0)."""
        return self.N if block == 0 else self.R

    def rows_out(self, block: int) -> int:
        """Rows whose attention output, MLP and LayerNorms matter (the last block's input rows are dropped)."""
        return self.N if block == self.num_blocks - 1 else self.R


def params_per_block() -> int:
    return 8  # qkv weight and bias, then weight and bias of the q/k/v, attention and MLP LayerNorms


class Weights:
    """The flat parameter list, cast once per sequence: Linear layers to the compute dtype, LayerNorms to stats."""

    def __init__(self, plan: Plan, params: tuple[Tensor, ...]) -> None:
        cd, sd = plan.compute, plan.stats
        per = params_per_block()
        self.blocks = []
        for b in range(plan.num_blocks):
            w, bias, *norms = params[b * per : (b + 1) * per]
            self.blocks.append((w.to(cd), bias.to(cd), *(p.to(sd) for p in norms)))
        rest = params[plan.num_blocks * per :]
        L = plan.mlp_layers
        self.mlp = [(rest[2 * j].to(cd), rest[2 * j + 1].to(cd)) for j in range(L)]
        self.gate = (rest[2 * L].to(cd), rest[2 * L + 1].to(cd)) if plan.G else None


class _BufferPool:
    """Keeps the large per-sequence buffers of finished runs for reuse (on CPU only).

    A fresh multi-megabyte CPU tensor comes straight from the operating system, and every first write to its pages
    is a page fault: without reuse those faults cost more than the arithmetic (a training step of the ``default``
    benchmark spent 40% of its time in them). CUDA's caching allocator already reuses memory, so CUDA tensors are
    not kept. A buffer returns to the pool only when nothing can read it any more: when the autograd node that
    saved it is freed (after backward, or when the graph is dropped), or at the end of the backward that used it.
    """

    def __init__(self, keep: int = 32) -> None:
        self.keep = keep  # free buffers kept per (shape, dtype)
        self.free: dict[tuple, list[Tensor]] = {}

    def take(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        if device.type == "cpu":
            free = self.free.get((shape, dtype))
            if free:
                return free.pop()
        return torch.empty(shape, dtype=dtype, device=device)

    def give(self, tensors: list[Tensor]) -> None:
        for tensor in tensors:
            if tensor.device.type == "cpu":
                free = self.free.setdefault((tuple(tensor.shape), tensor.dtype), [])
                if len(free) < self.keep:
                    free.append(tensor)


_pool = _BufferPool()


class _Saved:
    """What the backward needs. Where a batched weight gradient reads a per-step tensor and the op producing it can
    write in place, it goes into a buffer preallocated for all T steps; otherwise it is kept in a list and
    concatenated once at the end."""

    def __init__(self, plan: Plan, B: int, T: int, device: torch.device, memory_dtype: torch.dtype) -> None:
        cd, sd = plan.compute, plan.stats
        M, F_ = plan.M, plan.F
        self.buffers: list[Tensor] = []

        def take(rows: int, cols: int, dtype: torch.dtype) -> Tensor:
            # A local function, not an attribute: a closure stored on self would make a reference cycle, and the
            # buffers would then return to the pool only when the cycle collector runs, not when backward is done.
            buffer = _pool.take((T, rows, cols), dtype, device)
            self.buffers.append(buffer)
            return buffer

        nb = plan.num_blocks
        # Block 0's q/k/v projection reads the memory itself: the run's outputs serve as its saved input, unless
        # the products run in another dtype.
        self.qkv_in = [
            None if b == 0 and cd == memory_dtype else take(B * plan.rows_in(b), M, cd) for b in range(nb)
        ]
        self.qkv_pre = [take(B * plan.rows_in(b), F_, sd) for b in range(nb)]  # before its LayerNorm
        self.att_pre = [take(B * plan.rows_out(b), M, sd) for b in range(nb)]  # residual + attention
        self.mlp_pre = [take(B * plan.rows_out(b), M, sd) for b in range(nb)]  # residual + MLP
        # Inputs of the MLP layers: layer 0's (the attention LayerNorm's output) per step, the others in buffers.
        self.mlp_in0: list[list[Tensor]] = [[] for _ in range(nb)]
        self.mlp_in = [
            [None] + [take(B * plan.rows_out(b), M, cd) for _ in range(1, plan.mlp_layers)] for b in range(nb)
        ]
        self.gate_in = take(B * plan.N, M, cd) if plan.G else None  # tanh(memory)
        # Per step: LayerNorm statistics, attention operands and weights, gates.
        self.stats: list[list[list[tuple[Tensor, Tensor]]]] = [[[] for _ in range(3)] for _ in range(nb)]
        self.attention: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in range(nb)]
        self.gates: list[tuple[Tensor, Tensor]] = []  # sigmoid(gates) [B, N, 2G], tanh(candidate) [B, N, M]

    def nbytes(self) -> int:
        """Bytes kept for backward (the benchmark's activation-memory figure)."""
        tensors = [b for b in self.buffers] + [x for per in self.mlp_in0 for x in per]
        tensors += [x for per in self.attention for step in per for x in step]
        tensors += [x for step in self.gates for x in step]
        tensors += [x for per in self.stats for kind in per for step in kind for x in step]
        return sum(t.numel() * t.element_size() for t in tensors)

    def __del__(self) -> None:
        _pool.give(self.buffers)


def _linear(x: Tensor, weight: Tensor, bias: Tensor, out: Tensor | None, dtype: torch.dtype) -> Tensor:
    """x @ weight.T + bias, in ``out`` (its dtype) when given, else as ``dtype``."""
    if out is not None and out.dtype == weight.dtype:
        return torch.addmm(bias, x, weight.t(), out=out)
    y = torch.addmm(bias, x, weight.t())
    return out.copy_(y) if out is not None else y.to(dtype)


def _cat(tensors: list[Tensor], dtype: torch.dtype, buffers: list[Tensor]) -> Tensor:
    """Concatenate per-step [rows, cols] tensors into a pooled [T * rows, cols] tensor of ``dtype``."""
    rows, cols = tensors[0].shape
    out = _pool.take((len(tensors) * rows, cols), dtype, tensors[0].device)
    buffers.append(out)
    if tensors[0].dtype == dtype:
        return torch.cat(tensors, out=out)
    return out.copy_(torch.cat(tensors))


def run_forward(
    plan: Plan,
    memory: Tensor,
    rows: Tensor,
    qkv_rows: Tensor,
    gate_rows: Tensor | None,
    mask: Tensor | None,
    weights: Weights,
    saved: _Saved | None,
    sink: dict,
) -> Tensor:
    """The time loop. memory [B, N, M], rows [B, T, n, M], qkv_rows [B, T, n, F] (block 0's normalised q/k/v of
    the input rows), gate_rows [B, T, 2G] (input half of the gates, biases included), mask [B, T] -> the memory
    after every step, [T, B, N, M]. ``sink["gates"]`` receives the last step's sigmoid gates [B, N, 2G] (or None).
    With ``saved`` None (no gradient wanted) nothing is kept."""
    B, T = qkv_rows.shape[:2]
    N, n, R, H, k, h, M, G = plan.N, plan.n, plan.R, plan.H, plan.k, plan.h, plan.M, plan.G
    d = 2 * k + h
    cd, sd = plan.compute, plan.stats
    nb, L = plan.num_blocks, plan.mlp_layers
    keep = saved is not None
    outs = memory.new_empty(T, B, N, M)
    one = qkv_rows.new_zeros(1, dtype=cd)  # the ignored "input" of baddbmm with beta=0
    # Per step, block 0's q/k/v of the input rows in [B, H, n, d] layout (views, no copies).
    qkv_steps = qkv_rows.to(cd).view(B, T, n, H, d).transpose(2, 3).unbind(1)
    row_steps = rows.unbind(1) if nb > 1 else None
    gate_steps = gate_rows.unbind(1) if G else None
    gates = None
    for t in range(T):
        x = memory  # the rows entering the block whose q/k/v the loop computes: [B, rows_in, M]
        for b in range(nb):
            w_qkv, b_qkv, g1, c1, g2, c2, g3, c3 = weights.blocks[b]
            eps1, eps2, eps3 = plan.eps[b]
            rin, rout = plan.rows_in(b), plan.rows_out(b)
            # q/k/v of the rows this loop owns, then one LayerNorm over all q/k/v features.
            xc = x.reshape(B * rin, M)
            if keep and saved.qkv_in[b] is not None:
                xc = saved.qkv_in[b][t].copy_(xc)
            elif xc.dtype != cd:
                xc = xc.to(cd)
            pre = _linear(xc, w_qkv, b_qkv, saved.qkv_pre[b][t] if keep else None, sd)
            z, mean, rstd = torch.native_layer_norm(pre, (plan.F,), g1, c1, eps1)
            z = z.to(cd).view(B, rin, H, d).transpose(1, 2)  # [B, H, rin, d]
            if b == 0:
                zh = torch.cat([z, qkv_steps[t]], dim=2)  # [B, H, R, d], contiguous
                residual = memory if nb == 1 else torch.cat([memory, row_steps[t]], dim=1).to(sd)
            else:
                zh = z.contiguous()
                residual = x
            zh = zh.view(B * H, R, d)
            q, key, v = zh[:, :rout, :k], zh[:, :, k : 2 * k], zh[:, :, 2 * k :]
            scores = torch.baddbmm(one, q, key.transpose(1, 2), beta=0, alpha=plan.scale)  # [B*H, rout, R]
            probs = torch.softmax(scores, dim=-1, dtype=sd)
            att = torch.bmm(probs.to(cd), v).view(B, H, rout, h).transpose(1, 2)  # [B, rout, H, h]
            res = residual[:, :rout].reshape(B, rout, H, h)
            u = (
                torch.add(res, att, out=saved.att_pre[b][t].view(B, rout, H, h))
                if keep
                else (res + att).to(sd)
            )
            y, mean2, rstd2 = torch.native_layer_norm(u.view(B * rout, M), (M,), g2, c2, eps2)
            hid = y.to(cd)
            if keep:
                saved.mlp_in0[b].append(hid)
            for j, (w, bias) in enumerate(weights.mlp):
                if j < L - 1:
                    hid = _linear(hid, w, bias, saved.mlp_in[b][j + 1][t] if keep else None, cd).relu_()
                else:
                    hid = torch.addmm(bias, hid, w.t())
            v2 = torch.add(y, hid, out=saved.mlp_pre[b][t]) if keep else y + hid
            x, mean3, rstd3 = torch.native_layer_norm(v2, (M,), g3, c3, eps3)  # [B*rout, M]
            x = x.view(B, rout, M)
            if keep:
                stats = saved.stats[b]
                stats[0].append((mean, rstd))
                stats[1].append((mean2, rstd2))
                stats[2].append((mean3, rstd3))
                saved.attention[b].append((zh, probs))
        # Gates, then the new memory.
        new = outs[t]
        if G:
            w_g, b_g = weights.gate
            tanh_memory = (
                torch.tanh(memory, out=saved.gate_in[t].view(B, N, M)) if keep else torch.tanh(memory)
            )
            gates = torch.addmm(b_g, tanh_memory.view(B * N, M).to(cd), w_g.t()).view(B, N, 2 * G)
            gates = torch.add(gates, gate_steps[t].unsqueeze(1)).sigmoid_()  # stats dtype
            candidate = torch.tanh(x)
            torch.addcmul(gates[..., G:] * memory, gates[..., :G], candidate, out=new)
            if keep:
                saved.gates.append((gates, candidate))
        else:
            new.copy_(x)
        if mask is not None:
            new.copy_(torch.where(mask[:, t, None, None], new, memory))
        memory = new
    sink["gates"] = gates
    return outs


def run_backward(
    plan: Plan,
    memory0: Tensor,
    outs: Tensor,
    mask: Tensor | None,
    weights: Weights,
    saved: _Saved,
    grad_outs: Tensor | None,  # [T, B, N, M]
    grad_state: Tensor | None,
):
    """Gradients of the loop's inputs (initial memory, rows, qkv_rows, gate_rows) and of every parameter."""
    T, B = outs.shape[:2]
    N, n, R, H, k, h, M, G = plan.N, plan.n, plan.R, plan.H, plan.k, plan.h, plan.M, plan.G
    d, F_, L, nb = 2 * k + h, plan.F, plan.mlp_layers, plan.num_blocks
    cd, sd = plan.compute, plan.stats
    device = outs.device
    one = outs.new_zeros(1, dtype=cd)
    buffers: list[Tensor] = []  # pooled, returned at the end

    def take(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        buffer = _pool.take(shape, dtype, device)
        buffers.append(buffer)
        return buffer

    grad_qkv_rows = torch.empty(B, T, n, H, d, dtype=sd, device=device)
    grad_rows = torch.zeros(B, T, n, M, dtype=sd, device=device) if nb > 1 else None
    # Output gradients of every product and LayerNorm, per step, for the batched weight gradients at the end.
    g_qkv_out = [take((T, B * plan.rows_in(b), F_), sd) for b in range(nb)]  # of the q/k/v LayerNorm
    g_qkv_pre: list[list[Tensor]] = [[] for _ in range(nb)]  # of the q/k/v projection
    g_att_out = [take((T, B * plan.rows_out(b), M), sd) for b in range(nb)]  # of the attention LayerNorm
    # ... of the MLP LayerNorm (the block's output), of the last MLP layer, and of the other MLP layers.
    g_mlp_out = [take((T, B * plan.rows_out(b), M), sd) for b in range(nb)]
    g_mlp_last: list[list[Tensor]] = [[] for _ in range(nb)]
    g_mlp = [[take((T, B * plan.rows_out(b), M), cd) for _ in range(L - 1)] for b in range(nb)]
    g_gates = take((T, B, N, 2 * G), sd) if G else None

    grad_memory = grad_state.to(sd) if grad_state is not None else None
    for t in reversed(range(T)):
        memory = outs[t - 1] if t > 0 else memory0
        if grad_outs is not None:
            grad_memory = grad_outs[t] if grad_memory is None else grad_memory + grad_outs[t]
        if grad_memory is None:
            grad_memory = torch.zeros(B, N, M, dtype=sd, device=device)
        grad_new, grad_prev = grad_memory, None  # gradients of the step's new memory and of the previous one
        if mask is not None:
            keep = mask[:, t, None, None]
            grad_new, grad_prev = grad_memory * keep, grad_memory * ~keep
        last_out = g_mlp_out[nb - 1][t].view(B, N, M)  # gradient of the last block's output
        if G:
            gates, candidate = saved.gates[t]
            input_gate, forget_gate = gates[..., :G], gates[..., G:]
            torch.ops.aten.tanh_backward.grad_input(grad_new * input_gate, candidate, grad_input=last_out)
            grad_sig = torch.empty(B, N, 2 * G, dtype=sd, device=device)
            if G == M:
                torch.mul(grad_new, candidate, out=grad_sig[..., :G])
                torch.mul(grad_new, memory, out=grad_sig[..., G:])
            else:  # one gate per slot
                torch.sum(grad_new * candidate, -1, keepdim=True, out=grad_sig[..., :G])
                torch.sum(grad_new * memory, -1, keepdim=True, out=grad_sig[..., G:])
            grad_gates = torch.ops.aten.sigmoid_backward.grad_input(grad_sig, gates, grad_input=g_gates[t])
            grad_tanh = torch.mm(grad_gates.view(B * N, 2 * G).to(cd), weights.gate[0]).view(B, N, M)
            tanh_memory = saved.gate_in[t].view(B, N, M)
            if tanh_memory.dtype != sd:
                tanh_memory = torch.tanh(memory.to(sd))
            from_gates = torch.addcmul(
                torch.ops.aten.tanh_backward(grad_tanh.to(sd), tanh_memory), grad_new, forget_gate
            )
            grad_prev = from_gates if grad_prev is None else grad_prev + from_gates
        else:
            last_out.copy_(grad_new)
        for b in reversed(range(nb)):
            w_qkv, b_qkv, g1, c1, g2, c2, g3, c3 = weights.blocks[b]
            rin, rout = plan.rows_in(b), plan.rows_out(b)
            (mean, rstd), (mean2, rstd2), (mean3, rstd3) = (saved.stats[b][i][t] for i in range(3))
            zh, probs = saved.attention[b][t]
            q, key, v = zh[:, :rout, :k], zh[:, :, k : 2 * k], zh[:, :, 2 * k :]
            # The MLP, its LayerNorm and residual.
            grad = _layer_norm_backward(
                g_mlp_out[b][t], saved.mlp_pre[b][t], (M,), mean3, rstd3, g3, c3, [True, False, False]
            )[0]
            grad_v2 = grad
            g_mlp_last[b].append(grad.to(cd))
            grad = grad.to(cd)
            for j in reversed(range(L)):
                grad = torch.mm(grad, weights.mlp[j][0])  # gradient of layer j's input
                if j > 0:
                    grad = torch.ops.aten.threshold_backward.grad_input(
                        grad, saved.mlp_in[b][j][t], 0, grad_input=g_mlp[b][j - 1][t]
                    )
            grad_y1 = torch.add(grad_v2, grad, out=g_att_out[b][t])
            grad_u = _layer_norm_backward(
                grad_y1, saved.att_pre[b][t], (M,), mean2, rstd2, g2, c2, [True, False, False]
            )[0]  # [B*rout, M]: the gradient of the residual and of the attention output
            # Attention.
            grad_att = grad_u.view(B, rout, H, h).transpose(1, 2).reshape(B * H, rout, h).to(cd)
            grad_probs = torch.bmm(grad_att, v.transpose(1, 2))  # [B*H, rout, R]
            grad_v = torch.bmm(probs.to(cd).transpose(1, 2), grad_att)  # [B*H, R, h]
            grad_scores = _softmax_backward(grad_probs.to(sd), probs, -1, sd).to(cd)
            grad_q = torch.baddbmm(one, grad_scores, key, beta=0, alpha=plan.scale)  # [B*H, rout, k]
            grad_k = torch.baddbmm(one, grad_scores.transpose(1, 2), q, beta=0, alpha=plan.scale)
            if rout < R:
                grad_q = F.pad(grad_q, (0, 0, 0, R - rout))
            grad_zh = torch.cat([grad_q, grad_k, grad_v], dim=-1).view(B, H, R, d)
            grad_z = g_qkv_out[b][t].view(B, rin, H, d)
            grad_z.copy_(grad_zh[:, :, :rin].transpose(1, 2))
            if b == 0:
                grad_qkv_rows[:, t] = grad_zh[:, :, N:].transpose(1, 2)
            grad_pre = _layer_norm_backward(
                g_qkv_out[b][t], saved.qkv_pre[b][t], (F_,), mean, rstd, g1, c1, [True, False, False]
            )[0].to(cd)
            g_qkv_pre[b].append(grad_pre)
            grad_res = grad_u.view(B, rout, M)
            if b > 0:  # gradient of the previous block's output: through q/k/v and the residual
                prev = g_mlp_out[b - 1][t].view(B, R, M)
                if cd == sd:
                    torch.mm(grad_pre, w_qkv, out=prev.view(B * R, M))
                else:
                    prev.copy_(torch.mm(grad_pre, w_qkv).view(B, R, M))
                prev[:, :rout] += grad_res
            else:
                if nb > 1:
                    grad_rows[:, t] = grad_res[:, N:]
                into = grad_res[:, :N] if grad_prev is None else grad_prev + grad_res[:, :N]
                if cd == sd:
                    grad_prev = torch.addmm(into.reshape(B * N, M), grad_pre, w_qkv).view(B, N, M)
                else:
                    grad_prev = into + torch.mm(grad_pre, w_qkv).view(B, N, M)
        grad_memory = grad_prev

    # Weight gradients: one product (or reduction) per parameter over all steps.
    grads: list[Tensor] = []
    for b in range(nb):
        w_qkv, b_qkv, g1, c1, g2, c2, g3, c3 = weights.blocks[b]
        gp = _cat(g_qkv_pre[b][::-1], cd, buffers)  # [T * rows, F], in time order
        if saved.qkv_in[b] is not None:
            grad_w = gp.t().mm(saved.qkv_in[b].view(-1, M))
        else:  # block 0 read the memory before each step: memory0, then the outputs of steps 0..T-2
            rows0 = B * N
            grad_w = gp[:rows0].t().mm(memory0.reshape(rows0, M))
            if T > 1:
                grad_w = grad_w.addmm_(gp[rows0:].t(), outs[:-1].reshape(-1, M))
        grads += [grad_w, gp.sum(0, dtype=sd)]
        for i, (g_out, pre, norm_w, norm_b, size) in enumerate(
            (
                (g_qkv_out[b], saved.qkv_pre[b], g1, c1, F_),
                (g_att_out[b], saved.att_pre[b], g2, c2, M),
                (g_mlp_out[b], saved.mlp_pre[b], g3, c3, M),
            )
        ):
            mean = torch.cat([s[0] for s in saved.stats[b][i]])
            rstd = torch.cat([s[1] for s in saved.stats[b][i]])
            _, gw, gb = _layer_norm_backward(
                g_out.view(-1, size),
                pre.view(-1, size),
                (size,),
                mean,
                rstd,
                norm_w,
                norm_b,
                [False, True, True],
            )
            grads += [gw, gb]
    mlp_grads = [[None, None] for _ in range(L)]
    for b in range(nb):
        inputs = [_cat(saved.mlp_in0[b], cd, buffers)] + [x.view(-1, M) for x in saved.mlp_in[b][1:]]
        outputs = [g.view(-1, M) for g in g_mlp[b]] + [_cat(g_mlp_last[b][::-1], cd, buffers)]
        for j in range(L):
            w_part, b_part = outputs[j].t().mm(inputs[j]), outputs[j].sum(0, dtype=sd)
            acc = mlp_grads[j]
            acc[0] = w_part if acc[0] is None else acc[0] + w_part
            acc[1] = b_part if acc[1] is None else acc[1] + b_part
    for acc in mlp_grads:
        grads += acc
    grad_gate_rows = None
    if G:
        gg = g_gates.view(-1, 2 * G)
        grads += [gg.to(cd).t().mm(saved.gate_in.view(-1, M)), gg.sum(0)]
        grad_gate_rows = g_gates.sum(2).transpose(0, 1)  # [B, T, 2G]
    _pool.give(buffers)
    return grad_memory, grad_rows, grad_qkv_rows.view(B, T, n, F_), grad_gate_rows, grads


class FusedSequence(torch.autograd.Function):
    """apply(plan, sink, memory0, rows, qkv_rows, gate_rows, mask, *params) -> (memories [T, B, N, M],
    final memory [B, N, M]); see ``run_forward``."""

    @staticmethod
    def forward(ctx, plan, sink, memory0, rows, qkv_rows, gate_rows, mask, *params):
        device = memory0.device.type
        with torch.autocast(device, enabled=False):
            weights = Weights(plan, params)
            saved = _Saved(plan, rows.shape[0], rows.shape[1], memory0.device, memory0.dtype)
            outs = run_forward(plan, memory0, rows, qkv_rows, gate_rows, mask, weights, saved, sink)
        sink["saved_bytes"] = saved.nbytes() + outs.numel() * outs.element_size()
        ctx.plan, ctx.weights, ctx.saved, ctx.mask = plan, weights, saved, mask
        ctx.dtypes = [p.dtype for p in params]
        ctx.input_dtypes = (
            memory0.dtype,
            rows.dtype,
            qkv_rows.dtype,
            None if gate_rows is None else gate_rows.dtype,
        )
        ctx.save_for_backward(memory0)
        ctx.outs = outs
        ctx.set_materialize_grads(False)
        return outs, outs[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outs, grad_final):
        (memory0,) = ctx.saved_tensors
        plan = ctx.plan
        with torch.autocast(memory0.device.type, enabled=False):
            g_mem, g_rows, g_qkv, g_gate, grads = run_backward(
                plan,
                memory0,
                ctx.outs,
                ctx.mask,
                ctx.weights,
                ctx.saved,
                grad_outs,
                grad_final,
            )
        mem_dtype, rows_dtype, qkv_dtype, gate_dtype = ctx.input_dtypes
        grads = [g.to(dtype) for g, dtype in zip(grads, ctx.dtypes, strict=True)]
        return (
            None,
            None,
            g_mem.to(mem_dtype),
            None if g_rows is None else g_rows.to(rows_dtype),
            g_qkv.to(qkv_dtype),
            None if g_gate is None else g_gate.to(gate_dtype),
            None,
            *grads,
        )
