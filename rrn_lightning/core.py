"""The interface every recurrent core implements (RelationalMemory, LSTMCore, and yours)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

__all__ = ["RecurrentCore"]


class RecurrentCore(nn.Module):
    """Base class of the recurrent cores; the LightningModules accept any subclass as ``core``.

    A core maps a batch-first sequence to one output vector per step and a final state:

    - ``output_size``: features of one output step;
    - ``initial_state(batch_size, device=None, dtype=None)``: a fresh state;
    - ``step(x, state) -> (output [B, output_size], state)``: one time step;
    - ``forward(xs, state=None, lengths=None) -> (outputs [B, T, output_size], state)``: a whole sequence, with
      optional ``lengths`` [B] for padded batches (the state is held after each sequence's length and the outputs
      at padded steps are zero).

    Subclass it for a core of your own and name it by ``class_path`` in a config.
    """

    input_size: int

    @property
    def output_size(self) -> int:
        raise NotImplementedError

    def initial_state(self, batch_size: int, device: Any = None, dtype: Any = None) -> Any:
        raise NotImplementedError

    def step(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        raise NotImplementedError
