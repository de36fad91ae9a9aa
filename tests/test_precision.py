"""bf16 autocast on CPU: RMC and LSTM run forward and backward, stay close to fp32, keep a float32 state."""

from pathlib import Path

import pytest
import torch

from rrn_lightning import LSTMCore, RelationalMemory


def loss_and_grads(core, xs, targets, bf16: bool):
    core.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        outs, state = core(xs)
    loss = torch.nn.functional.mse_loss(outs.float(), targets)
    loss.backward()
    return outs, state, loss.item(), {n: p.grad.clone() for n, p in core.named_parameters()}


@pytest.mark.parametrize(
    "make",
    [
        lambda: RelationalMemory(16, mem_slots=4, head_size=16, num_heads=2),
        lambda: RelationalMemory(
            16, mem_slots=2, head_size=8, num_heads=4, num_blocks=2, gate_style="memory"
        ),
        lambda: LSTMCore(16, 64, num_layers=2),
    ],
    ids=["rmc", "rmc-2-blocks", "lstm"],
)
def test_bf16_autocast_close_to_fp32(make):
    core = make()
    xs = torch.randn(8, 12, 16)
    targets = torch.randn(8, 12, core.output_size)
    outs32, state32, loss32, grads32 = loss_and_grads(core, xs, targets, bf16=False)
    outs16, state16, loss16, grads16 = loss_and_grads(core, xs, targets, bf16=True)
    error = (outs16.float() - outs32).abs()
    assert error.max() < 0.15 and error.mean() < 0.01, (error.max(), error.mean())  # bf16 keeps ~3 digits
    assert loss16 == pytest.approx(loss32, rel=0.01)
    for name, grad in grads32.items():
        assert grads16[name].dtype == torch.float32, name
        cosine = torch.nn.functional.cosine_similarity(grads16[name].flatten(), grad.flatten(), dim=0)
        assert cosine > 0.98, f"{name}: cosine {cosine:.4f}"


def test_rmc_state_stays_float32_under_autocast():
    core = RelationalMemory(16, mem_slots=4, head_size=16, num_heads=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, state = core(torch.randn(4, 6, 16))
        input_gate, _ = core.last_gates
    assert state.dtype == torch.float32
    assert input_gate.dtype == torch.float32  # gate pre-activations summed in float32


def test_bf16_parameters_add_the_gate_biases_exactly():
    """Gate statistics are float32 even with bf16 parameters, and the biases are added as exact floats: a
    saturating forget bias keeps the memory exactly, as in float32."""
    core = RelationalMemory(16, mem_slots=4, head_size=16, num_heads=2, forget_bias=1e4, input_bias=-1e4)
    core = core.to(torch.bfloat16)
    state = core.initial_state(2, dtype=torch.bfloat16) + 0.25
    _, final = core(torch.randn(2, 3, 16, dtype=torch.bfloat16), state)
    assert torch.equal(final, state)


MIXED_FITS = {
    "nth_farthest/rmc_cpu": ["--data.init_args.batch_size=16", "--data.init_args.val_size=16"],
    "nth_farthest/lstm_cpu": ["--data.init_args.batch_size=16", "--data.init_args.val_size=16"],
    "learn_to_execute/addition_rmc_cpu": ["--data.init_args.batch_size=8", "--data.init_args.val_size=8"],
    "language_modelling/ptb_rmc_small": [
        f"--data.init_args.corpus={Path(__file__).parent / 'data' / 'gettysburg'}",
        "--data.init_args.batch_size=2",
        "--data.init_args.eval_batch_size=2",
    ],
}


@pytest.mark.parametrize("name", MIXED_FITS)
def test_bf16_mixed_fit_of_every_task_family_on_cpu(name, tmp_path):
    """``--trainer.precision=bf16-mixed`` through the CLI: one training and one validation batch, finite losses."""
    from rrn_lightning.cli import cli_main

    config = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.yaml"
    cli = cli_main(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.precision=bf16-mixed",
            "--trainer.fast_dev_run=true",
            f"--trainer.default_root_dir={tmp_path}",
            *MIXED_FITS[name],
        ]
    )
    assert cli.trainer.precision == "bf16-mixed"
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])
