"""LSTM baseline with the same interface as ``RelationalMemory``: ``initial_state``, ``step``, ``forward``."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..common import ConfigurationError, check_positive_ints
from .base import CoreTrace, RecurrentCore

__all__ = ["LSTMCore"]

LSTMState = tuple[Tensor, Tensor]


class LSTMCore(RecurrentCore):
    """A (stacked) LSTM over ``nn.LSTM`` - the cuDNN kernel on GPU for whole sequences - as a drop-in core.

    The state is ``nn.LSTM``'s ``(h, c)``, each ``[num_layers, B, hidden_size]``. ``forward`` with ``lengths`` runs
    packed sequences, so each sequence's state is taken at its true end and outputs at padded steps are zero.

    Args:
        input_size: Features of one input row (D).
        hidden_size: Units per layer; also the output size.
        num_layers: Stacked LSTM layers.
        dropout: Dropout between stacked layers (as ``nn.LSTM``; needs num_layers > 1 to have an effect).
        input_rows: Input rows per step (n); with n > 1 a step's input ``[B, n, D]`` is flattened to ``n * D``
            features, so the same data feeds an RMC with ``input_rows=n`` and this baseline.

    Under CPU autocast, ``nn.LSTM`` runs in the autocast dtype through oneDNN; on a CPU whose oneDNN has no
    bfloat16 LSTM (no AVX-512 BF16, e.g. many AMD EPYC), where ``nn.LSTM`` itself raises "could not create a
    primitive descriptor", this core runs the LSTM in float32 instead: the same results as without autocast.
    """

    state_batch_dim = 1  # (h, c), each [num_layers, B, hidden_size]

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        input_rows: int = 1,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_positive_ints(
            owner,
            input_size=input_size,
            hidden_size=hidden_size,
            num_layers=num_layers,
            input_rows=input_rows,
        )
        if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
            raise ConfigurationError(
                f"{owner}: dropout must be a probability in [0, 1), got dropout={dropout!r}."
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.input_rows = input_rows
        self.lstm = nn.LSTM(
            input_rows * input_size,
            hidden_size,
            num_layers=num_layers,
            dropout=float(dropout),
            batch_first=True,
        )

    @property
    def output_size(self) -> int:
        return self.hidden_size

    def initial_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> LSTMState:
        """Zero ``(h, c)``, each ``[num_layers, batch_size, hidden_size]``."""
        check_positive_ints(f"{type(self).__name__}.initial_state", batch_size=batch_size)
        shape = (self.num_layers, batch_size, self.hidden_size)
        return torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)

    def _flatten_rows(self, where: str, x: Tensor, leading: int) -> Tensor:
        self._check_inputs(where, x, leading)
        return x.flatten(leading) if self.input_rows > 1 else x

    def _check_state(self, where: str, state: LSTMState, batch_size: int) -> None:
        expected = (self.num_layers, batch_size, self.hidden_size)
        ok = isinstance(state, tuple | list) and len(state) == 2
        ok = ok and all(isinstance(s, Tensor) and tuple(s.shape) == expected for s in state)
        if not ok:
            got = (
                [list(s.shape) if isinstance(s, Tensor) else type(s).__name__ for s in state]
                if isinstance(state, tuple | list)
                else type(state).__name__
            )
            raise ValueError(
                f"LSTMCore.{where}: state must be a pair (h, c), each of shape [num_layers, batch, hidden_size] = "
                f"{list(expected)}, got {got}. Use core.initial_state(batch_size) for a fresh state."
            )

    def _lstm(self, xs, state: LSTMState):
        """``self.lstm(xs, state)``, in float32 under a CPU autocast that this CPU's oneDNN cannot run."""
        if torch.is_autocast_enabled("cpu") and self.lstm.weight_ih_l0.device.type == "cpu":
            if not _onednn_has_lstm_in(torch.get_autocast_dtype("cpu")):
                dtype = self.lstm.weight_ih_l0.dtype
                with torch.autocast("cpu", enabled=False):
                    return self.lstm(xs.to(dtype), tuple(s.to(dtype) for s in state))
        return self.lstm(xs, state)

    def step(self, x: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        """One step: x ``[B, D]`` (or ``[B, n, D]``) -> ``(output [B, H], (h, c))``."""
        x = self._flatten_rows("step", x, leading=1)
        self._check_state("step", state, x.shape[0])
        out, state = self._lstm(x.unsqueeze(1), tuple(state))  # out [B, 1, H]
        return out[:, 0], state

    def forward(
        self, xs: Tensor, state: LSTMState | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, LSTMState]:
        """Run over ``xs`` ``[B, T, D]`` (or ``[B, T, n, D]``) -> ``(outputs [B, T, H], (h, c))``."""
        xs = self._flatten_rows("forward", xs, leading=2)
        B, T = xs.shape[:2]
        if state is None:
            state = self.initial_state(B, device=xs.device, dtype=xs.dtype)
        self._check_state("forward", state, B)
        state = tuple(state)
        if lengths is None:
            return self._lstm(xs, state)
        self._length_mask(lengths, B, T, xs.device)  # validates shape, dtype and range
        lengths = torch.as_tensor(lengths).cpu()
        if int(lengths.min()) == 0:
            raise ValueError(
                f"LSTMCore.forward: lengths must be >= 1 (packed sequences cannot be empty), got lengths[{int(lengths.argmin())}]=0;"
                " drop empty sequences from the batch (RelationalMemory accepts them and keeps their state)."
            )
        packed = pack_padded_sequence(xs, lengths, batch_first=True, enforce_sorted=False)
        out, state = self._lstm(packed, state)
        outs, _ = pad_packed_sequence(out, batch_first=True, total_length=T)  # [B, T, H], zeros when padded
        return outs, state

    @torch.no_grad()
    def trace(self, xs: Tensor, state: LSTMState | None = None, lengths: Tensor | None = None) -> CoreTrace:
        """``forward`` with every step's gates (``CoreTrace.gates``: ``"input"``, ``"forget"``, ``"output"``, each
        ``[B, T, num_layers, hidden_size]``), recomputed in float32 from ``nn.LSTM``'s weights one layer and step at
        a time (``nn.LSTM`` does not expose its gates); for inspection, not for training. Dropout between layers
        is not applied (call it in eval mode, as validation does)."""
        # Float32 throughout, also when called under autocast.
        with torch.autocast(xs.device.type, enabled=False):
            return self._trace(self._flatten_rows("trace", xs, leading=2), state, lengths)

    def _trace(self, xs: Tensor, state: LSTMState | None, lengths: Tensor | None) -> CoreTrace:
        B, T = xs.shape[:2]
        if state is None:
            state = self.initial_state(B, device=xs.device, dtype=torch.float32)
        self._check_state("trace", state, B)
        mask = self._real_steps(lengths, B, T, xs.device)
        layer_input = xs.float()
        gates: dict[str, list[Tensor]] = {"input": [], "forget": [], "output": []}
        for layer in range(self.num_layers):
            weight_ih = getattr(self.lstm, f"weight_ih_l{layer}").float()
            weight_hh = getattr(self.lstm, f"weight_hh_l{layer}").float()
            bias = (getattr(self.lstm, f"bias_ih_l{layer}") + getattr(self.lstm, f"bias_hh_l{layer}")).float()
            h, c = state[0][layer].float(), state[1][layer].float()
            projected = layer_input @ weight_ih.T + bias  # [B, T, 4H]: the input's part of every step's gates
            outputs, steps = [], {name: [] for name in gates}
            for t in range(T):
                i, f, g, o = (projected[:, t] + h @ weight_hh.T).chunk(4, dim=-1)  # nn.LSTM's gate order
                i, f, o = i.sigmoid(), f.sigmoid(), o.sigmoid()
                new_c = f * c + i * g.tanh()
                new_h = o * new_c.tanh()
                keep = mask[:, t, None]
                c, h = torch.where(keep, new_c, c), torch.where(keep, new_h, h)
                outputs.append(torch.where(keep, new_h, 0.0))
                for name, value in zip(steps, (i, f, o), strict=True):
                    steps[name].append(value)
            layer_input = torch.stack(outputs, dim=1)  # [B, T, H]
            for name in gates:
                gates[name].append(torch.stack(steps[name], dim=1))  # [B, T, H]
        return CoreTrace(
            outputs=layer_input,
            mask=mask,
            gates={name: torch.stack(layers, dim=2) for name, layers in gates.items()},  # [B, T, L, H]
        )


_ONEDNN_LSTM: dict[torch.dtype, bool] = {}


def _onednn_has_lstm_in(dtype: torch.dtype) -> bool:
    """Whether ``nn.LSTM`` runs under CPU autocast to ``dtype`` on this machine (tried once on a tiny LSTM)."""
    if dtype not in _ONEDNN_LSTM:
        probe = nn.LSTM(2, 2, batch_first=True)
        try:
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
                probe(torch.zeros(1, 1, 2))
            _ONEDNN_LSTM[dtype] = True
        except RuntimeError:
            _ONEDNN_LSTM[dtype] = False
    return _ONEDNN_LSTM[dtype]
