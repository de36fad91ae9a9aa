"""The RMC's ``compile_step`` switch: the compiled step equals the eager one (which equals the reference, see
test_memory.py), recompiles stay bounded, bad settings are refused and a missing compiler falls back to eager.

Inductor's compiles take tens of seconds on two cores, so only two tests compile with it (tiny shapes, many
features at once); the matrix of configurations runs through the same torch.compile machinery (Dynamo and
AOTAutograd) with the ``aot_eager`` backend, which skips only the code generation."""

import warnings

import pytest
import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

from rrn_lightning import RelationalMemory
from rrn_lightning.common import ConfigurationError
from rrn_lightning.cores import rmc
from rrn_lightning.cores.compiling import CompiledFunction, resolve_mode

D = 5


def make(**kwargs) -> RelationalMemory:
    args = dict(input_size=D, mem_slots=3, head_size=4, num_heads=2)
    args.update(kwargs)
    torch.manual_seed(0)
    return RelationalMemory(**args)


def xs_for(core: RelationalMemory, batch: int = 3, steps: int = 4) -> torch.Tensor:
    rows = () if core.input_rows == 1 else (core.input_rows,)
    return torch.randn(batch, steps, *rows, D)


def run(core, xs, lengths=None, autocast=None):
    """Outputs, final state and every gradient (inputs, initial state, parameters) of a random linear loss."""
    xs = xs.clone().requires_grad_()
    state0 = (core.initial_state(xs.shape[0]) + 0.1).requires_grad_()
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        outs, final = core(xs, state0, lengths=lengths)
    generator = torch.Generator().manual_seed(1)
    w_outs = torch.randn(outs.shape, generator=generator)
    w_final = torch.randn(final.shape, generator=generator)
    loss = (outs.float() * w_outs).mean() + (final.float() * w_final).mean()
    grads = torch.autograd.grad(loss, [xs, state0, *core.parameters()])
    return [outs, final, *grads]


def assert_all_close(got, expected, atol):
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(g.float(), e.float(), atol=atol, rtol=0, msg=f"result {i}")


class Counting:
    """The aot_eager backend, counting the graphs it is given (one per Dynamo compile)."""

    def __init__(self) -> None:
        self.graphs = 0
        self._aot = aot_autograd(
            fw_compiler=lambda gm, _: make_boxed_func(gm.forward),
            bw_compiler=lambda gm, _: make_boxed_func(gm.forward),
        )

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return self._aot(gm, example_inputs)


@pytest.fixture
def traced(monkeypatch) -> Counting:
    """``compile_step=True`` runs the step through Dynamo and AOTAutograd with a counting aot_eager backend."""
    torch._dynamo.reset()
    backend = Counting()
    step = CompiledFunction(rmc.rmc_step, "RMC step")
    step._compiled["default"] = torch.compile(rmc.rmc_step, backend=backend)
    monkeypatch.setattr(rmc, "_STEP", step)
    yield backend
    torch._dynamo.reset()


# --------------------------------------------------------------------- the setting
def test_bad_compile_settings_are_refused_with_the_choices():
    with pytest.raises(
        ConfigurationError, match=r"RelationalMemory: compile_step must be .*'reduce-overhead'.*'fast'"
    ):
        make(compile_step="fast")
    core = make()
    with pytest.raises(ConfigurationError, match=r"compile_step=1"):
        core.compile_step = 1
    core.compile_step = "max-autotune"
    # Not an architecture argument.
    assert core.compile_step == "max-autotune" and "compile_step" not in core.init_kwargs


def test_true_means_the_devices_usual_mode():
    assert resolve_mode(True, torch.device("cpu")) == "default"
    # Until reduce-overhead is measured on a GPU.
    assert resolve_mode(True, torch.device("cuda", 0)) == "default"
    assert resolve_mode(False, torch.device("cpu")) is None
    assert resolve_mode("max-autotune", torch.device("cpu")) == "max-autotune"


# --------------------------------------------------------------------- the traced step equals the eager step
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"gate_style": "memory", "num_blocks": 2},
        {"gate_style": None, "input_rows": 3},
        {"num_blocks": 2, "input_rows": 2, "attention_mlp_layers": 1, "forget_bias": -0.3},
    ],
)
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_traced_step_equals_the_eager_step(kwargs, padded, traced):
    core = make(**kwargs).double()
    xs = xs_for(core, batch=4).double()
    lengths = torch.tensor([4, 1, 3, 0]) if padded else None
    eager = run(core, xs, lengths)
    core.compile_step = True
    assert_all_close(run(core, xs, lengths), eager, atol=1e-12)
    assert traced.graphs >= 1  # the compiled path did run


def test_recompiles_are_bounded_by_what_changes_the_graph(traced):
    """Sequence length never recompiles (the loop is outside the graph, and each step's slices are contiguous),
    nor does batch size (compiled as dynamic), except batch size 1, which torch.compile always specialises;
    padding and grad mode each make their own graph."""
    core = make(compile_step=True)
    for steps in (2, 5, 9):
        run(core, xs_for(core, batch=3, steps=steps))
    for batch in (2, 7, 5, 3):  # the last smaller batch, other batch sizes
        run(core, xs_for(core, batch=batch))
    assert traced.graphs == 1
    run(core, xs_for(core, batch=1))
    assert traced.graphs == 2
    run(core, xs_for(core, batch=6), lengths=torch.tensor([4, 2, 3, 1, 4, 0]))
    run(core, xs_for(core, batch=4), lengths=torch.tensor([1, 2, 3, 4]))
    assert traced.graphs == 3
    with torch.no_grad():
        core(xs_for(core, batch=3, steps=6))
        core(xs_for(core, batch=4, steps=2))
    assert traced.graphs == 4


# --------------------------------------------------------------------- inductor itself, two tests in all
def test_inductor_step_equals_the_eager_step_with_padding_input_rows_and_biases():
    """One block (two double the compile; the traced tests above cover two blocks); padding, two input rows and a
    non-default forget bias, all in one compile."""
    torch._dynamo.reset()
    core = make(input_rows=2, forget_bias=-0.3)
    xs = xs_for(core, batch=4)
    lengths = torch.tensor([4, 1, 3, 0])
    eager = run(core, xs, lengths)
    core.compile_step = True
    assert_all_close(run(core, xs, lengths), eager, atol=1e-5)


def test_inductor_step_under_bf16_autocast_matches_eager():
    torch._dynamo.reset()
    core = make(gate_style="memory")
    xs = xs_for(core)
    eager = run(core, xs, autocast=torch.bfloat16)
    core.compile_step = True
    compiled = run(core, xs, autocast=torch.bfloat16)
    assert compiled[1].dtype == torch.float32  # the state stays float32
    assert_all_close(compiled, eager, atol=2e-2)


def test_without_a_compiler_the_step_runs_eagerly_after_one_warning(monkeypatch):
    torch._dynamo.reset()
    step = CompiledFunction(rmc.rmc_step, "RMC step")
    monkeypatch.setattr(rmc, "_STEP", step)
    core = make(gate_style=None, mem_slots=2)
    xs = xs_for(core, batch=2, steps=2)
    with torch.no_grad():
        eager = core(xs)[0]
        core.compile_step = True
        broken = {"cpp.cxx": (None, "/nonexistent/c++"), "fx_graph_cache": False}
        with torch._inductor.config.patch(broken), pytest.warns(RuntimeWarning) as caught:
            fallback = core(xs)[0]
        # Ours, among what else a first compile may warn about (torch's own deprecations, when this test runs
        # first): exactly one.
        (message,) = [str(w.message) for w in caught if "could not compile the RMC step" in str(w.message)]
        assert "compile_step=false" in message
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # one warning, not one per call
            again = core(xs)[0]
    assert torch.equal(fallback, eager) and torch.equal(again, eager)
    torch._dynamo.reset()


# --------------------------------------------------------------------- the switch on the LightningModules
def test_the_task_modules_set_their_cores_compile_step():
    from rrn_lightning import LanguageModel, LSTMCore, Seq2Seq, SequenceClassifier

    classifier = SequenceClassifier(make(), num_classes=3, head_sizes=(4,), compile_step=True)
    assert classifier.core.compile_step is True and classifier.hparams.compile_step is True
    assert (
        SequenceClassifier(make(compile_step="max-autotune"), num_classes=3).core.compile_step
        == "max-autotune"
    )
    seq2seq = Seq2Seq(make(), num_classes=4, decoder_core=make(), head_sizes=(4,), compile_step="default")
    assert seq2seq.core.compile_step == "default" and seq2seq.decoder_core.compile_step == "default"
    lstm = LanguageModel(LSTMCore(D, 8), vocab_size=10, compile_step=True)  # nothing to compile: left alone
    assert not hasattr(lstm.core, "compile_step")
    with pytest.raises(
        ConfigurationError, match=r"SequenceClassifier: compile_step must be .* got compile_step='yes'"
    ):
        SequenceClassifier(make(), num_classes=3, compile_step="yes")


def test_the_cli_sets_compile_step_on_the_model_or_the_core(tmp_path, capsys):
    from pathlib import Path

    from rrn_lightning.cli import cli_main

    config = str(Path(__file__).resolve().parents[1] / "experiments" / "nth_farthest" / "rmc_cpu.yaml")
    root = f"--trainer.default_root_dir={tmp_path}"
    cli = cli_main(["--config", config, root, "--model.init_args.compile_step=true"], run=False)
    assert cli.model.core.compile_step is True
    cli = cli_main(
        ["--config", config, root, "--model.init_args.core.init_args.compile_step=default"], run=False
    )
    assert cli.model.core.compile_step == "default" and cli.model.hparams.compile_step is None
    assert cli_main(["--config", config, root], run=False).model.core.compile_step is False
    with pytest.raises(SystemExit):
        cli_main(["--config", config, root, "--model.init_args.compile_step=fast"], run=False)
    err = capsys.readouterr().err
    assert "SequenceClassifier: compile_step must be false, true" in err and "got compile_step='fast'" in err
