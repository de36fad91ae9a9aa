"""The interface every recurrent core implements (RelationalMemory, LSTMCore, and yours)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["CoreTrace", "RecurrentCore"]


@dataclass
class CoreTrace:
    """What a core did over a sequence, for inspection (``RecurrentCore.trace``); every tensor detached, float32.

    Attributes:
        outputs: ``[B, T, output_size]``, as ``forward`` gives them.
        mask: ``[B, T]``, True at real (not padded) steps.
        attention: The RMC's attention weights ``[B, T, blocks, H, N, N+n]`` (the memory rows as queries, over the
            memory rows then the input rows), or None for a core without attention.
        gates: Gate activations by name (``"input"``, ``"forget"``, and the LSTM's ``"output"``), each
            ``[B, T, ...]``; empty for a core without gates.
    """

    outputs: Tensor
    mask: Tensor
    attention: Tensor | None = None
    gates: dict[str, Tensor] = field(default_factory=dict)


class RecurrentCore(nn.Module):
    """Base class of the recurrent cores; the LightningModules accept any subclass as ``core``.

    A core maps a batch-first sequence to one output vector per step and a final state:

    - ``output_size``: features of one output step;
    - ``initial_state(batch_size, device=None, dtype=None)``: a fresh state;
    - ``step(x, state) -> (output [B, output_size], state)``: one time step;
    - ``forward(xs, state=None, lengths=None) -> (outputs [B, T, output_size], state)``: a whole sequence, with
      optional ``lengths`` [B] for padded batches (the state is held after each sequence's length and the outputs
      at padded steps are zero).

    A state's layout is the core's own business. Code outside a core handles a state only through the methods
    below (detach, batch size, selecting rows, shapes), which work for any tensor or nested tuple/list/dict of
    tensors whose batch dimension is ``state_batch_dim``; a core with another layout overrides them.

    Subclass it for a core of your own and name it by ``class_path`` in a config.
    """

    input_size: int
    input_rows: int = 1
    #: The batch dimension of every tensor of this core's state: 0 for ``[B, ...]`` (the RMC), 1 for ``nn.LSTM``'s
    #: ``[layers, B, H]``.
    state_batch_dim: int = 0

    @property
    def output_size(self) -> int:
        raise NotImplementedError

    def initial_state(self, batch_size: int, device: Any = None, dtype: Any = None) -> Any:
        raise NotImplementedError

    def step(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        raise NotImplementedError

    # ------------------------------------------------------------------ the state, for code outside the core
    def detach_state(self, state: Any, device: torch.device | str | None = None) -> Any:
        """The state cut from the autograd graph (truncated backpropagation), on ``device`` if given."""
        return _map_tensors(lambda t: t.detach() if device is None else t.detach().to(device), state)

    def state_batch_size(self, state: Any) -> int:
        """How many sequences the state holds."""
        return _first_tensor(state).shape[self.state_batch_dim]

    def select_state(self, state: Any, index: Tensor) -> Any:
        """The state of the sequences ``index`` [K] (int64), in that order: selects, repeats or reorders rows."""
        return _map_tensors(lambda t: t.index_select(self.state_batch_dim, index.to(t.device)), state)

    def state_shapes(self, state: Any) -> Any:
        """The state's structure with each tensor replaced by its shape (to tell whether two cores' states have
        the same form)."""
        return _map_tensors(lambda t: tuple(t.shape), state)

    @torch.no_grad()
    def trace(self, xs: Tensor, state: Any = None, lengths: Tensor | None = None) -> CoreTrace:
        """Run over ``xs`` like ``forward`` and also return what the core computed inside (attention weights,
        gates) as a ``CoreTrace``; no gradients. This base version has the outputs only: cores override it."""
        outputs, _ = self(xs, state, lengths=lengths)
        return CoreTrace(outputs.float(), self._real_steps(lengths, *outputs.shape[:2], outputs.device))

    # Input checks shared by the cores: ValueErrors that say the expected and the actual shape.
    def _check_inputs(self, where: str, x: Tensor, leading: int) -> None:
        """Check that ``x`` is ``[batch, (time,) (input_rows,) input_size]``; ``leading`` is 1 (step) or 2."""
        owner = f"{type(self).__name__}.{where}"
        row = (self.input_size,) if self.input_rows == 1 else (self.input_rows, self.input_size)
        if x.dim() != leading + len(row) or tuple(x.shape[leading:]) != row:
            names = ["batch", "time"][:leading]
            if self.input_rows > 1:
                names.append(f"input_rows={self.input_rows}")
            names.append(f"input_size={self.input_size}")
            raise ValueError(f"{owner}: input must have shape [{', '.join(names)}], got {list(x.shape)}.")
        if leading == 2 and x.shape[1] == 0:
            raise ValueError(f"{owner}: the input has no time steps (shape {list(x.shape)}).")

    def _real_steps(
        self, lengths: Tensor | None, batch_size: int, steps: int, device: torch.device
    ) -> Tensor:
        """The [B, T] mask of real steps for ``trace``: every step without ``lengths``, else ``_length_mask``."""
        if lengths is None:
            return torch.ones(batch_size, steps, dtype=torch.bool, device=device)
        return self._length_mask(lengths, batch_size, steps, device)

    def _length_mask(self, lengths: Tensor, batch_size: int, steps: int, device: torch.device) -> Tensor:
        """Validate ``lengths`` [B] and return the [B, T] mask of real (not padded) steps."""
        owner = f"{type(self).__name__}.forward"
        if not isinstance(lengths, Tensor):
            lengths = torch.as_tensor(lengths)
        if lengths.shape != (batch_size,) or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise ValueError(
                f"{owner}: lengths must be an integer tensor of shape [batch]={[batch_size]}, "
                f"got shape {list(lengths.shape)} and dtype {lengths.dtype}."
            )
        if len(lengths) and (int(lengths.min()) < 0 or int(lengths.max()) > steps):
            raise ValueError(
                f"{owner}: lengths must lie in 0..{steps} (the number of time steps), got values from "
                f"{int(lengths.min())} to {int(lengths.max())}."
            )
        return torch.arange(steps, device=device)[None, :] < lengths.to(device)[:, None]  # [B, T]


def _map_tensors(fn, state: Any) -> Any:
    """``fn`` applied to each tensor of a tensor or a nested tuple / list / dict of tensors, the structure kept."""
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, dict):
        return {key: _map_tensors(fn, value) for key, value in state.items()}
    if isinstance(state, tuple | list):
        values = [_map_tensors(fn, value) for value in state]
        return type(state)(*values) if hasattr(state, "_fields") else type(state)(values)  # namedtuples too
    raise TypeError(
        f"A core state must be a tensor or a tuple, list or dict of them, got {type(state).__name__}; a core with "
        "another kind of state overrides RecurrentCore's state methods."
    )


def _first_tensor(state: Any) -> Tensor:
    if isinstance(state, Tensor):
        return state
    values = state.values() if isinstance(state, dict) else state
    return _first_tensor(next(iter(values)))
