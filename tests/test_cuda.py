"""On a GPU: the RMC equals the plain reference in fp32, and stays close to it under bf16 and fp16 autocast, eagerly
and with its step compiled; the LSTM baseline runs under autocast; a Lightning fit runs in ``bf16-mixed``.

Every test here skips on a machine without CUDA. ``benchmarks/gpu_check.sh`` runs this file on a GPU."""

import pytest
import torch

from rrn_lightning import LSTMCore, RelationalMemory
from rrn_lightning.cores import ReferenceRelationalMemory

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
D = 7
CONFIGS = [
    {},
    {"num_blocks": 2, "gate_style": "memory", "forget_bias": -0.3, "input_bias": 0.7},
    {"gate_style": None, "input_rows": 3},
]
COMPILE = [False, "default", "reduce-overhead"]


def make(**kwargs) -> RelationalMemory:
    torch.manual_seed(0)
    return RelationalMemory(D, mem_slots=4, head_size=8, num_heads=2, **kwargs).to(CUDA)


def inputs(core: RelationalMemory, batch: int = 5, steps: int = 6) -> torch.Tensor:
    rows = () if core.input_rows == 1 else (core.input_rows,)
    return torch.randn(batch, steps, *rows, D, device=CUDA)


def results(core, xs, state0, lengths=None, autocast: torch.dtype | None = None):
    """Outputs, final state and the gradients of the inputs, the initial state and every parameter of a random
    linear loss (the same weights for every call)."""
    xs, state0 = xs.clone().requires_grad_(), state0.clone().requires_grad_()
    with torch.autocast("cuda", dtype=autocast or torch.float16, enabled=autocast is not None):
        if isinstance(core, ReferenceRelationalMemory):
            outs, final = core(xs, state0)
        else:
            outs, final = core(xs, state0, lengths=lengths)
    generator = torch.Generator(device=CUDA).manual_seed(1)
    w_outs = torch.randn(outs.shape, generator=generator, device=CUDA)
    w_final = torch.randn(final.shape, generator=generator, device=CUDA)
    loss = (outs.float() * w_outs).mean() + (final.float() * w_final).mean()
    params = core.params.parameters() if isinstance(core, ReferenceRelationalMemory) else core.parameters()
    grads = torch.autograd.grad(loss, [xs, state0, *params])
    return [outs.float(), final.float(), *(g.float() for g in grads)]


@pytest.fixture(autouse=True)
def _fresh_compiles():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("compile_step", COMPILE)
@pytest.mark.parametrize("kwargs", CONFIGS)
def test_fp32_equals_the_reference(kwargs, compile_step):
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference comparison is at fp32 precision
    core = make(**kwargs, compile_step=compile_step)
    reference = ReferenceRelationalMemory.from_core(core)
    xs = inputs(core)
    state0 = core.initial_state(xs.shape[0], device=CUDA) + 0.1
    got, expected = results(core, xs, state0), results(reference, xs, state0)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=0, msg=f"result {i}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("compile_step", COMPILE)
@pytest.mark.parametrize("kwargs", CONFIGS[:2])
def test_autocast_stays_close_to_the_fp32_reference(kwargs, compile_step, dtype):
    core = make(**kwargs, compile_step=compile_step)
    reference = ReferenceRelationalMemory.from_core(core)
    xs = inputs(core)
    state0 = core.initial_state(xs.shape[0], device=CUDA) + 0.1
    got = results(core, xs, state0, autocast=dtype)
    expected = results(reference, xs, state0)
    assert got[1].dtype == torch.float32
    tolerance = 0.1 if dtype == torch.bfloat16 else 0.02  # bf16 keeps ~3 significant digits, fp16 ~4
    for i, (g, e) in enumerate(zip(got[:2], expected[:2], strict=True)):
        assert (g - e).abs().max() < tolerance, f"result {i}"
    for i, (g, e) in enumerate(zip(got[2:], expected[2:], strict=True)):
        cosine = torch.nn.functional.cosine_similarity(g.flatten(), e.flatten(), dim=0)
        assert cosine > 0.99, f"gradient {i}: cosine {cosine:.4f}"


@pytest.mark.parametrize("compile_step", COMPILE)
def test_padded_batches_equal_the_eager_step(compile_step):
    core = make(num_blocks=2)
    xs = inputs(core, batch=4)
    lengths = torch.tensor([6, 1, 3, 0], device=CUDA)
    state0 = core.initial_state(4, device=CUDA) + 0.1
    eager = results(core, xs, state0, lengths)
    core.compile_step = compile_step
    for i, (g, e) in enumerate(zip(results(core, xs, state0, lengths), eager, strict=True)):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=0, msg=f"result {i}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_lstm_runs_under_autocast(dtype):
    core = LSTMCore(D, 32).to(CUDA)
    xs = torch.randn(4, 6, D, device=CUDA)
    with torch.autocast("cuda", dtype=dtype):
        outs, (h, c) = core(xs, lengths=torch.tensor([6, 2, 5, 1]))
    outs.float().sum().backward()
    assert outs.dtype == dtype and core.lstm.weight_ih_l0.grad.dtype == torch.float32


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_a_short_fit_on_the_gpu(precision, tmp_path):
    from lightning.pytorch import Trainer

    from datamodules import NthFarthestDataModule
    from rrn_lightning import SequenceClassifier

    data = NthFarthestDataModule(
        num_vectors=4, num_features=4, batch_size=32, batches_per_epoch=4, val_size=64
    )
    model = SequenceClassifier(
        RelationalMemory(data.input_size, mem_slots=2, head_size=8, num_heads=2, compile_step=True),
        num_classes=data.num_classes,
        head_sizes=(16,),
    )
    trainer = Trainer(
        accelerator="gpu",
        devices=1,
        precision=precision,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, data)
    assert torch.isfinite(trainer.callback_metrics["val/loss"])
