"""LSTMCore: the same interface as RelationalMemory, over nn.LSTM."""

import pytest
import torch

from rrn_lightning import LSTMCore

B, D, H = 3, 5, 8


def test_shapes_and_state():
    core = LSTMCore(D, H, num_layers=2, dropout=0.1)
    assert core.output_size == H
    h, c = core.initial_state(B)
    assert h.shape == c.shape == (2, B, H)
    outs, (h, c) = core(torch.randn(B, 4, D))
    assert outs.shape == (B, 4, H) and h.shape == (2, B, H)
    torch.testing.assert_close(outs[:, -1], h[-1])


@pytest.mark.parametrize("input_rows", [1, 2])
def test_forward_equals_loop_of_steps(input_rows):
    core = LSTMCore(D, H, num_layers=2, input_rows=input_rows)
    xs = torch.randn(B, 6, D) if input_rows == 1 else torch.randn(B, 6, input_rows, D)
    state0 = (torch.randn(2, B, H), torch.randn(2, B, H))
    outs, (h, c) = core(xs, state0)
    state, step_outs = state0, []
    for t in range(6):
        out, state = core.step(xs[:, t], state)
        step_outs.append(out)
    torch.testing.assert_close(outs, torch.stack(step_outs, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(h, state[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(c, state[1], atol=1e-5, rtol=0)


def test_lengths_use_packed_sequences():
    core = LSTMCore(D, H)
    xs = torch.randn(4, 6, D)
    lengths = torch.tensor([6, 1, 3, 5])
    outs, (h, c) = core(xs, lengths=lengths)
    for b, length in enumerate(lengths.tolist()):
        alone, (h1, c1) = core(xs[b : b + 1, :length])
        torch.testing.assert_close(outs[b : b + 1, :length], alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(h[:, b : b + 1], h1, atol=1e-5, rtol=0)
        torch.testing.assert_close(c[:, b : b + 1], c1, atol=1e-5, rtol=0)
        assert torch.count_nonzero(outs[b, length:]) == 0


def test_errors():
    with pytest.raises(ValueError, match="hidden_size=0"):
        LSTMCore(D, 0)
    with pytest.raises(ValueError, match="dropout=1.5"):
        LSTMCore(D, H, dropout=1.5)
    core = LSTMCore(D, H)
    with pytest.raises(
        ValueError, match=r"input must have shape \[batch, time, input_size=5\], got \[3, 4, 2\]"
    ):
        core(torch.randn(B, 4, 2))
    with pytest.raises(
        ValueError, match=r"state must be a pair \(h, c\).*\[1, 3, 8\], got \[\[1, 3, 4\], \[1, 3, 8\]\]"
    ):
        core.step(torch.randn(B, D), (torch.zeros(1, B, 4), torch.zeros(1, B, H)))
    with pytest.raises(ValueError, match="lengths must be >= 1"):
        core(torch.randn(B, 4, D), lengths=torch.tensor([0, 4, 4]))
