"""What a model learns of Nth farthest, step by step: accuracy per n and per position of vector m, the loss against
the 50% shortcut's, gradient norms of core and head, how much of the vectors a linear read-out finds in the core's
output, and the RMC's gates. A plain PyTorch loop over ``make_nth_farthest`` (no Lightning), one JSON line per
evaluation. Findings: benchmarks/RESULTS.md, "Nth farthest: what held both cores at 50%".

    python benchmarks/nth_farthest_diagnose.py --model rmc --steps 3000             # the paper's presentation
    python benchmarks/nth_farthest_diagnose.py --model rmc --presentation set        # the quick start's
    python benchmarks/nth_farthest_diagnose.py --model mlp                           # non-recurrent reference
    python benchmarks/nth_farthest_diagnose.py --model rmc --id-order                # rows sorted by id: no binding

``--model mlp`` is the non-recurrent reference: an MLP (the classifier's head) over all K rows at once, flattened
in their given order. ``--id-order`` sorts every example's rows by vector id before the model reads them, which
takes away the binding of ids to rows; ``--freeze-core`` trains the head alone on the core's initial weights.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datamodules import make_nth_farthest  # noqa: E402
from rrn_lightning import LSTMCore, RelationalMemory  # noqa: E402
from rrn_lightning.tasks.base import mlp  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import lstm_hidden_for  # noqa: E402  (the speed benchmark's equal-parameter LSTM)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--model", choices=["rmc", "lstm", "mlp"], default="rmc")
    add("--num-vectors", type=int, default=4)
    add("--num-features", type=int, default=4)
    add("--presentation", choices=["sequence", "set"], default="sequence")
    add("--set-steps", type=int, default=2, help="steps of a 'set' example")
    add("--id-order", action="store_true", help="rows sorted by vector id (no binding to learn)")
    add("--freeze-core", action="store_true", help="train the head only")
    add("--mem-slots", type=int, default=4)
    add("--num-heads", type=int, default=2)
    add("--head-size", type=int, default=32)
    add("--num-blocks", type=int, default=1)
    add("--key-size", type=int, default=None)
    add("--gate-style", default="unit", choices=["unit", "memory", "none"])
    add("--forget-bias", type=float, default=1.0)
    add("--input-bias", type=float, default=0.0)
    add("--hidden-size", type=int, default=None, help="LSTM units (default: the RMC's core parameters)")
    add("--head-sizes", default="256,256,256,256")
    add("--lr", type=float, default=1e-3)
    add("--batch-size", type=int, default=256)
    add("--clip", type=float, default=1.0, help="gradient norm clipping (0: none)")
    add("--steps", type=int, default=3000)
    add("--minutes", type=float, default=None, help="stop after this much training time")
    add("--eval-every", type=int, default=250)
    add("--val-size", type=int, default=4096)
    add("--seed", type=int, default=0)
    add("--threads", type=int, default=1)
    return parser


class FlatMLPInput(nn.Module):
    """The non-recurrent reference's 'core': all rows of an example flattened into one vector."""

    def __init__(self, rows: int, width: int) -> None:
        super().__init__()
        self.output_size = rows * width

    def forward(self, xs: Tensor) -> tuple[Tensor, None]:
        return xs.flatten(1)[:, None], None  # [B, 1, K * D]: one 'step' holding everything


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    K, Fe = args.num_vectors, args.num_features
    D = Fe + 3 * K
    rows = K if args.presentation == "set" else 1
    rmc = RelationalMemory(
        D,
        args.mem_slots,
        args.head_size,
        args.num_heads,
        args.num_blocks,
        args.forget_bias,
        args.input_bias,
        None if args.gate_style == "none" else args.gate_style,
        key_size=args.key_size,
        input_rows=rows,
    )
    if args.model == "rmc":
        core = rmc
    elif args.model == "lstm":
        units = args.hidden_size or lstm_hidden_for(sum(p.numel() for p in rmc.parameters()), rows * D)
        core = LSTMCore(D, units, input_rows=rows)
    else:
        core = FlatMLPInput(K, D)
    head = mlp(core.output_size, tuple(int(s) for s in args.head_sizes.split(",") if s), K)
    if args.freeze_core:
        core.requires_grad_(False)
    trained = [p for p in [*head.parameters(), *core.parameters()] if p.requires_grad]
    optimizer = torch.optim.Adam(trained, lr=args.lr)

    def present(inputs: Tensor) -> Tensor:
        if args.id_order:
            order = inputs[:, :, Fe : Fe + K].argmax(-1).argsort(-1)  # [B, K]
            inputs = inputs.gather(1, order[:, :, None].expand_as(inputs))
        if args.presentation == "set" and args.model != "mlp":
            inputs = inputs[:, None].expand(-1, args.set_steps, -1, -1)  # [B, S, K, D]
        return inputs

    def features(inputs: Tensor) -> Tensor:
        outputs, _ = core(present(inputs))
        return outputs[:, -1]  # [B, O]: what the head reads

    val = make_nth_farthest(args.val_size, K, Fe, torch.Generator().manual_seed(1))
    n_of = val.groups
    m_of = val.inputs[:, 0, Fe + 2 * K :].argmax(-1)  # [V]
    m_position = (val.inputs[:, :, Fe : Fe + K].argmax(-1) == m_of[:, None]).float().argmax(-1)  # [V]
    ids = val.inputs[:, :, Fe : Fe + K].argmax(-1).argsort(-1)
    by_id = val.inputs.gather(1, ids[:, :, None].expand_as(val.inputs))[:, :, :Fe].flatten(1)  # [V, K * F]
    shortcut = (K - 1) / K * math.log(K - 1)  # answer m when n = K - 1, else guess among the other K - 1

    def readout_r2(feature: Tensor) -> float:
        """R^2 of a ridge-regularised linear map from the core's output to all vectors in id order, fitted on one
        half of the validation set and scored on the other."""
        half = feature.shape[0] // 2
        design = torch.cat([feature, torch.ones(feature.shape[0], 1)], 1).double()  # [V, O + 1]
        gram = design[:half].T @ design[:half] + torch.eye(design.shape[1], dtype=torch.double)
        weights = torch.linalg.solve(gram, design[:half].T @ by_id[:half].double())
        residual = design[half:] @ weights - by_id[half:].double()
        return float(
            1 - residual.square().sum() / (by_id[half:] - by_id[half:].mean(0)).double().square().sum()
        )

    train = torch.Generator().manual_seed(1000 + args.seed)
    started, training_time = time.perf_counter(), 0.0
    print(json.dumps({"args": vars(args), "core_parameters": sum(p.numel() for p in core.parameters())}))
    for step in range(1, args.steps + 1):
        tick = time.perf_counter()
        batch = make_nth_farthest(args.batch_size, K, Fe, train)
        loss = F.cross_entropy(head(features(batch.inputs)), batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        core_grads = [p.grad.norm() for p in core.parameters() if p.grad is not None]
        grad_core = float(torch.stack(core_grads).norm()) if core_grads else 0.0
        grad_head = float(torch.stack([p.grad.norm() for p in head.parameters()]).norm())
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(trained, args.clip)
        optimizer.step()
        training_time += time.perf_counter() - tick
        out_of_time = args.minutes is not None and training_time > 60 * args.minutes
        if step % args.eval_every and step != args.steps and not out_of_time:
            continue
        with torch.no_grad():
            feature = features(val.inputs)
            logits = head(feature)
            correct = (logits.argmax(-1) == val.labels).float()
            gates = getattr(core, "last_gates", None)
            report = {
                "step": step,
                "train_seconds": round(training_time, 1),
                "val_acc": round(float(correct.mean()), 4),
                "val_loss": round(float(F.cross_entropy(logits, val.labels)), 4),
                "shortcut_loss": round(shortcut, 4),
                "acc_by_n": [round(float(correct[n_of == n].mean()), 3) for n in range(K)],
                "acc_by_position_of_m": [round(float(correct[m_position == p].mean()), 3) for p in range(K)],
                "grad_norm_core": round(grad_core, 4),
                "grad_norm_head": round(grad_head, 4),
                "vectors_linear_r2": round(readout_r2(feature), 3),
            }
            if gates is not None:
                report["input_gate_mean"] = round(float(gates[0].mean()), 3)
                report["forget_gate_mean"] = round(float(gates[1].mean()), 3)
        print(json.dumps(report), flush=True)
        if out_of_time:
            break
    print(json.dumps({"wall_seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
