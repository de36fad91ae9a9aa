"""RelationalMemory: Sonnet's own test cases re-expressed, equivalence with the plain reference, and errors."""

import gc
import math

import pytest
import torch

from rrn_lightning import RelationalMemory
from rrn_lightning.cores import ReferenceRelationalMemory

B, D = 3, 7


def make(**kwargs) -> RelationalMemory:
    args = dict(input_size=D, mem_slots=4, head_size=8, num_heads=2)
    args.update(kwargs)
    return RelationalMemory(**args)


def inputs(core: RelationalMemory, batch: int = B, steps: int | None = None) -> torch.Tensor:
    row = (core.input_size,) if core.input_rows == 1 else (core.input_rows, core.input_size)
    shape = (batch, *row) if steps is None else (batch, steps, *row)
    return torch.randn(shape)


# --------------------------------------------------------------------- Sonnet's test cases
def test_state_and_output_sizes():
    core = make(mem_slots=4, head_size=8, num_heads=2)
    assert core.output_size == 4 * 8 * 2
    assert core.state_shape == (4, 16)
    assert core.initial_state(B).shape == (B, 4, 16)


@pytest.mark.parametrize("input_rows", [1, 3])
def test_output_and_state_shapes(input_rows):
    core = make(input_rows=input_rows)
    out, state = core.step(inputs(core), core.initial_state(B))
    assert out.shape == (B, core.output_size)
    assert state.shape == (B, *core.state_shape)
    outs, state = core(inputs(core, steps=5))
    assert outs.shape == (B, 5, core.output_size)
    assert state.shape == (B, *core.state_shape)


@pytest.mark.parametrize("mem_slots,head_size,num_heads", [(2, 2, 1), (4, 4, 2), (8, 8, 3), (16, 16, 4)])
def test_recurrence(mem_slots, head_size, num_heads):
    core = make(mem_slots=mem_slots, head_size=head_size, num_heads=num_heads, num_blocks=5)
    outs, state = core(inputs(core, steps=6))
    assert outs.shape == (B, 6, mem_slots * head_size * num_heads)
    assert state.shape == (B, mem_slots, head_size * num_heads)
    assert torch.isfinite(outs).all()
    # The memory really recurs: each step's output differs from the one before.
    assert not torch.allclose(outs[:, 1:], outs[:, :-1])


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"num_blocks": 0}, "num_blocks"),
        ({"attention_mlp_layers": 0}, "attention_mlp_layers"),
        ({"gate_style": "bad_gating"}, "gate_style"),
        ({"gate_style": "none"}, "gate_style"),
        ({"mem_slots": 0}, "mem_slots"),
        ({"head_size": -1}, "head_size"),
        ({"num_heads": 0}, "num_heads"),
        ({"input_size": 0}, "input_size"),
        ({"key_size": 0}, "key_size"),
        ({"input_rows": 0}, "input_rows"),
        ({"mem_slots": 2.5}, "mem_slots"),
        ({"forget_bias": float("nan")}, "forget_bias"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    value = next(iter(kwargs.values()))
    with pytest.raises(ValueError, match=rf"{name}={value!r}".replace("(", r"\(").replace(")", r"\)")):
        make(**kwargs)


@pytest.mark.parametrize("gate_style,gate_width", [("unit", 16), ("memory", 1)])
def test_gate_shapes(gate_style, gate_width):
    core = make(gate_style=gate_style)
    core.step(inputs(core), core.initial_state(B))
    input_gate, forget_gate = core.last_gates
    assert input_gate.shape == (B, 4, gate_width)
    assert forget_gate.shape == (B, 4, gate_width)
    core(inputs(core, steps=2))
    assert core.last_gates[0].shape == (B, 4, gate_width)


def test_no_gating_changes_memory():
    core = make(gate_style=None)
    assert not hasattr(core, "gate_input")
    state = core.initial_state(B)
    _, new = core.step(inputs(core), state)
    assert core.last_gates is None
    assert not torch.allclose(new, state)


@pytest.mark.parametrize("gate_style", ["unit", "memory"])
def test_saturated_gates_keep_memory_exactly(gate_style):
    core = make(gate_style=gate_style, forget_bias=math.inf, input_bias=-math.inf)
    state = torch.randn(B, 4, 16)
    _, new = core.step(inputs(core), state)
    assert torch.equal(new, state)
    # Biases set after construction count too.
    core = make(gate_style=gate_style)
    core.forget_bias, core.input_bias = math.inf, -math.inf
    _, final = core(inputs(core, steps=3), state)
    assert torch.equal(final, state)


def test_key_size_different_from_head_size():
    core = make(key_size=5, head_size=8)
    assert core.blocks[0].qkv.out_features == 2 * (2 * 5 + 8)
    outs, state = core(inputs(core, steps=3))
    assert outs.shape == (B, 3, core.output_size)


# --------------------------------------------------------------------- initial state and init
@pytest.mark.parametrize("mem_slots,head_size,num_heads", [(4, 8, 2), (4, 4, 1), (8, 2, 2)])
def test_initial_state_is_padded_or_cut_identity(mem_slots, head_size, num_heads):
    core = make(mem_slots=mem_slots, head_size=head_size, num_heads=num_heads)
    M = head_size * num_heads
    state = core.initial_state(2)
    expected = torch.zeros(mem_slots, M)
    for i in range(min(mem_slots, M)):
        expected[i, i] = 1.0
    assert torch.equal(state[0], expected) and torch.equal(state[1], expected)
    assert core.initial_state(2, dtype=torch.float64).dtype == torch.float64


def test_sonnet_initialisation():
    core = make(input_size=64, head_size=32)
    for name, module in core.named_modules():
        if isinstance(module, torch.nn.Linear):
            bound = 2.0 / math.sqrt(module.in_features)
            assert module.weight.abs().max() <= bound + 1e-7, name
            assert module.weight.std().item() == pytest.approx(
                0.88 / math.sqrt(module.in_features), rel=0.1
            ), name
            assert torch.count_nonzero(module.bias) == 0, name


def test_mlp_is_shared_and_attention_is_per_block():
    core = make(num_blocks=3, attention_mlp_layers=3, gate_style=None)
    M, F = 16, 2 * (8 + 8 + 8)  # memory width; q/k/v width (2 heads of 8, key_size = head_size)
    per_block = (M * F + F) + 2 * F + 2 * (2 * M)  # q/k/v Linear, its LayerNorm, the two LayerNorms
    mlp = 3 * (M * M + M)  # one MLP of three layers, whatever the number of blocks
    assert sum(p.numel() for p in core.parameters()) == (D * M + M) + 3 * per_block + mlp
    assert core.blocks[0].qkv is not core.blocks[1].qkv


# --------------------------------------------------------------------- sequence semantics
CONFIGS = [
    {},
    {"num_blocks": 3},
    {"gate_style": "memory"},
    {"gate_style": None},
    {"key_size": 5},
    {"mem_slots": 1},
    {"mem_slots": 8, "num_heads": 3, "head_size": 4},
    {"input_rows": 3},
    {"attention_mlp_layers": 1, "forget_bias": 0.5, "input_bias": -0.5},
]


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_forward_equals_loop_of_steps(kwargs):
    core = make(**kwargs)
    xs = inputs(core, steps=6)
    state0 = torch.randn(B, *core.state_shape)
    outs, final = core(xs, state0)
    state, step_outs = state0, []
    for t in range(6):
        out, state = core.step(xs[:, t], state)
        step_outs.append(out)
    torch.testing.assert_close(outs, torch.stack(step_outs, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(final, state, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs", CONFIGS)
@pytest.mark.parametrize("batch", [1, B])
@pytest.mark.parametrize("steps", [5, 1])
def test_equals_plain_reference(kwargs, batch, steps):
    core = make(**kwargs)
    reference = ReferenceRelationalMemory.from_core(core)
    xs = inputs(core, batch=batch, steps=steps).requires_grad_()
    state0 = (core.initial_state(batch) + 0.1 * torch.randn(batch, *core.state_shape)).requires_grad_()
    outs, final = core(xs, state0)
    ref_outs, ref_final = reference(xs, state0)
    torch.testing.assert_close(outs, ref_outs, atol=1e-5, rtol=0)
    torch.testing.assert_close(final, ref_final, atol=1e-5, rtol=0)
    # Gradients of every parameter, of the inputs and of the initial state agree too. The loss is a random linear
    # function of every output (a sum of squares of LayerNorm outputs is nearly constant, which would leave only
    # rounding noise to compare), averaged so that gradients are O(1) and an absolute tolerance means the same for
    # every parameter.
    w_out, w_final = torch.randn_like(outs), torch.randn_like(final)
    grads = torch.autograd.grad(
        (outs * w_out).mean() + (final * w_final).mean(), [xs, state0, *core.parameters()]
    )
    ref_grads = torch.autograd.grad(
        (ref_outs * w_out).mean() + (ref_final * w_final).mean(), [xs, state0, *reference.params.parameters()]
    )
    names = ["input", "initial state"] + [name for name, _ in core.named_parameters()]
    for name, g, r in zip(names, grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("kwargs", [{}, {"input_rows": 2}, {"gate_style": None}])
def test_lengths_hold_state_at_true_end(kwargs):
    core = make(**kwargs)
    xs = inputs(core, batch=4, steps=6)
    lengths = torch.tensor([6, 1, 3, 0])
    outs, final = core(xs, lengths=lengths)
    for b, length in enumerate(lengths.tolist()):
        if length == 0:
            torch.testing.assert_close(final[b], core.initial_state(1)[0])
            continue
        alone_outs, alone_final = core(xs[b : b + 1, :length])
        torch.testing.assert_close(final[b : b + 1], alone_final, atol=1e-5, rtol=0)
        torch.testing.assert_close(outs[b : b + 1, :length], alone_outs, atol=1e-5, rtol=0)
        assert torch.count_nonzero(outs[b, length:]) == 0
    # Whatever sits in the padding changes nothing.
    padded = xs.clone()
    for b, length in enumerate(lengths.tolist()):
        padded[b, length:] = 1e3
    outs2, final2 = core(padded, lengths=lengths)
    assert torch.equal(outs, outs2) and torch.equal(final, final2)


@pytest.mark.parametrize("kwargs", [{}, {"num_blocks": 2, "gate_style": "memory"}, {"gate_style": None}])
def test_every_parameter_gets_a_gradient(kwargs):
    core = make(**kwargs)
    outs, _ = core(inputs(core, steps=3))
    outs.sum().backward()
    for name, p in core.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name


def test_attention_weights_can_be_returned():
    core = make(num_blocks=2, input_rows=2)
    reference = ReferenceRelationalMemory.from_core(core)
    xs = inputs(core, steps=3)
    outs, final, attention = core(xs, return_attention=True)
    assert attention.shape == (B, 3, 2, 2, 4, 4 + 2)  # [B, T, blocks, H, memory rows, memory + input rows]
    torch.testing.assert_close(attention.sum(-1), torch.ones(B, 3, 2, 2, 4))
    state = core.initial_state(B)
    for t in range(3):
        out, state, step_attention = core.step(xs[:, t], state, return_attention=True)
        torch.testing.assert_close(step_attention, attention[:, t])
    # The memory rows' weights are the reference's, block by block.
    memory = reference.initial_state(B)
    for t in range(3):
        _, memory = reference.step(xs[:, t], memory)
        for block, weights in enumerate(reference.last_attention):
            torch.testing.assert_close(attention[:, t, block], weights[:, :, :4], atol=1e-5, rtol=0)
    torch.testing.assert_close(outs, core(xs)[0])


def train_a_few_steps(seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    core = make()
    optimizer = torch.optim.Adam(core.parameters(), lr=1e-2)
    for _ in range(3):
        outs, _ = core(torch.randn(B, 4, D))
        loss = outs.square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return torch.cat([p.detach().flatten() for p in core.parameters()])


def test_seed_makes_training_deterministic():
    assert torch.equal(train_a_few_steps(1), train_a_few_steps(1))
    assert not torch.equal(train_a_few_steps(1), train_a_few_steps(2))


# --------------------------------------------------------------------- shape errors
def test_wrong_input_shapes_say_expected_and_actual():
    core = make()
    state = core.initial_state(B)
    with pytest.raises(ValueError, match=r"input must have shape \[batch, input_size=7\], got \[3, 5\]"):
        core.step(torch.randn(B, 5), state)
    with pytest.raises(
        ValueError, match=r"input must have shape \[batch, time, input_size=7\], got \[3, 7\]"
    ):
        core(torch.randn(B, D))
    with pytest.raises(ValueError, match=r"state must have shape .* \[3, 4, 16\], got \(3, 4, 8\)"):
        core.step(torch.randn(B, D), torch.randn(B, 4, 8))
    with pytest.raises(ValueError, match=r"state must have shape .* \[3, 4, 16\], got \(2, 4, 16\)"):
        core(torch.randn(B, 2, D), torch.randn(2, 4, 16))
    rows = make(input_rows=3)
    with pytest.raises(ValueError, match=r"\[batch, input_rows=3, input_size=7\], got \[3, 7\]"):
        rows.step(torch.randn(B, D), state)
    with pytest.raises(ValueError, match=r"no time steps"):
        core(torch.randn(B, 0, D))
    with pytest.raises(ValueError, match=r"lengths must lie in 0..2"):
        core(torch.randn(B, 2, D), lengths=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"lengths must be an integer tensor of shape \[batch\]=\[3\]"):
        core(torch.randn(B, 2, D), lengths=torch.tensor([1.0, 2.0, 2.0]))
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got batch_size=0"):
        core.initial_state(0)


def test_backward_twice_with_retained_graph():
    core = make()
    outs, _ = core(inputs(core, steps=4))
    loss = outs.square().mean()
    loss.backward(retain_graph=True)
    once = {n: p.grad.clone() for n, p in core.named_parameters()}
    loss.backward()
    for name, p in core.named_parameters():
        torch.testing.assert_close(p.grad, 2 * once[name], msg=name)


def test_double_backward():
    core = make()
    outs, _ = core(inputs(core, steps=3))
    (grad,) = torch.autograd.grad(outs.square().mean(), core.mlp[0].weight, create_graph=True)
    grad.square().sum().backward()  # a gradient penalty
    assert core.mlp[0].weight.grad is not None


def test_inference_mode_matches_training_forward():
    core = make(num_blocks=2)
    xs = inputs(core, steps=4)
    outs, final = core(xs)
    with torch.inference_mode():
        outs2, final2 = core(xs)
    torch.testing.assert_close(outs, outs2, atol=0, rtol=0)
    torch.testing.assert_close(final, final2, atol=0, rtol=0)


@pytest.mark.parametrize("gate_style", ["unit", "memory"])
def test_float64_with_non_default_gate_biases_equals_the_reference(gate_style):
    """The gate biases are added as the exact Python floats, whatever the parameters' dtype (a float32 copy of
    -0.3 would differ from the reference by ~1e-8 from the first step)."""
    core = make(forget_bias=-0.3, input_bias=0.7, gate_style=gate_style, num_blocks=2).double()
    reference = ReferenceRelationalMemory.from_core(core)
    xs = inputs(core, steps=5).double()
    outs, final = core(xs)
    ref_outs, ref_final = reference(xs)
    torch.testing.assert_close(outs, ref_outs, atol=1e-12, rtol=0)
    torch.testing.assert_close(final, ref_final, atol=1e-12, rtol=0)


def test_outputs_changed_in_place_before_backward_give_the_right_gradients():
    core = make(num_blocks=2).double()
    xs = inputs(core, steps=4).double()
    weights = torch.randn(B, 4, core.output_size, dtype=torch.float64)
    outs, _ = core(xs)
    expected = torch.autograd.grad((2 * outs * weights).sum(), list(core.parameters()))
    outs, final = core(xs)
    outs.mul_(2)
    try:
        got = torch.autograd.grad((outs * weights).sum(), list(core.parameters()))
    except RuntimeError as error:  # refusing is fine too; silently wrong is not
        assert "modified by an inplace operation" in str(error)
        return
    for (name, _), g, e in zip(core.named_parameters(), got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-12, rtol=0, msg=name)


def test_a_weight_changed_between_forward_and_backward_is_refused():
    core = make()
    outs, _ = core(inputs(core, steps=3))
    with torch.no_grad():
        core.blocks[0].qkv.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        outs.sum().backward()


def test_a_finished_training_step_leaves_no_reference_cycle_holding_tensors():
    core = make(num_blocks=2)
    optimizer = torch.optim.SGD(core.parameters(), lr=0.1)
    xs = inputs(core, steps=4)
    lengths = torch.tensor([4, 2, 3])

    def train_step():
        outs, final = core(xs, lengths=lengths)
        loss = outs.square().mean() + final.square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    train_step()  # anything made once (caches) is made here
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        train_step()
        gc.collect()  # with DEBUG_SAVEALL, everything found in a cycle stays in gc.garbage
        cyclic = [obj for obj in gc.garbage if isinstance(obj, torch.Tensor)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert cyclic == [], [tuple(t.shape) for t in cyclic]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_runs_in_other_parameter_dtypes(dtype):
    core = make(num_blocks=2).to(dtype)
    xs = inputs(core, steps=3).to(dtype)
    outs, state = core(xs)
    assert outs.dtype == dtype and state.dtype == dtype
    outs.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == dtype for p in core.parameters())
    if dtype == torch.float64:
        reference = ReferenceRelationalMemory.from_core(core)
        torch.testing.assert_close(outs, reference(xs)[0], atol=1e-10, rtol=0)
