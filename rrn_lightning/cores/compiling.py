"""The ``compile_step`` switch of the cores: run a function under ``torch.compile``, or eagerly where that is impossible.

``compile_step=False`` runs eagerly; ``True`` is inductor's ``"default"`` mode (C++/OpenMP code on the CPU, Triton
kernels on CUDA); a mode name picks one outright. ``"reduce-overhead"`` adds CUDA graphs on CUDA; it is not what
``True`` means yet because it has not been measured on a GPU here (``benchmarks/gpu_check.sh`` measures it). Under
CUDA graphs a step's outputs are cloned before the next step runs, since the next replay overwrites them. The
function is compiled at its first call on a device. Where compiling fails for want of a toolchain (no C++ compiler,
an unsupported platform), the run goes on eagerly after one warning that says why and how to silence it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch.utils._pytree import tree_map

from ..common import ConfigurationError

__all__ = ["MODES", "CompileMode", "CompiledFunction", "check_compile_mode", "resolve_mode"]

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
# A bool or one of MODES. Typed as a plain ``str`` so that a config with a bad name reaches ``check_compile_mode``,
# whose one-line error lists the choices, rather than the CLI parser's dump of every union member.
CompileMode = bool | str


def check_compile_mode(owner: str, value: object) -> CompileMode:
    """``value`` if it is a valid ``compile_step`` setting, else a ConfigurationError that lists the valid ones."""
    if isinstance(value, bool) or value in MODES:
        return value
    choices = ", ".join(repr(m) for m in MODES)
    raise ConfigurationError(
        f"{owner}: compile_step must be false, true (torch.compile's default mode) or one of its modes by name "
        f"({choices}), got compile_step={value!r}."
    )


def resolve_mode(value: CompileMode, device: torch.device) -> str | None:
    """The ``torch.compile`` mode a setting means on ``device``; None for eager."""
    if value is False:
        return None
    if value is True:
        return "default"  # on CUDA too, until "reduce-overhead" is measured there (benchmarks/gpu_check.sh)
    return value


class CompiledFunction:
    """``fn``, and its compiled versions by mode, built at first use and shared by every caller in the process.

    Call it as ``compiled(mode, *args, **kwargs)``; ``mode=None`` calls ``fn`` itself, as does a call made while an outer
    ``torch.compile`` traces (the outer compile then traces ``fn`` inline). The first axis of every tensor given
    directly (not inside a container) is the batch axis and is compiled as dynamic from the first call, so that the last, smaller batch of
    an epoch (or another batch size) reuses the graph instead of compiling a second one; batch size 1 still gets
    its own (torch.compile specialises sizes 0 and 1).
    """

    def __init__(self, fn: Callable, what: str) -> None:
        self.fn = fn
        self.what = what
        self._compiled: dict[str, Callable] = {}
        self._failed: set[str] = set()

    def __call__(self, mode: str | None, *args, **kwargs):
        if mode is None or mode in self._failed or torch.compiler.is_compiling():
            return self.fn(*args, **kwargs)
        compiled = self._compiled.get(mode)
        try:
            if compiled is None:  # torch.compile itself refuses unsupported platforms (RuntimeError)
                compiled = self._compiled[mode] = torch.compile(self.fn, mode=mode)
            for arg in (*args, *kwargs.values()):
                if isinstance(arg, torch.Tensor) and arg.dim() > 0:
                    torch._dynamo.maybe_mark_dynamic(arg, 0)
            out = compiled(*args, **kwargs)  # the backend compiles at the first call (BackendCompilerFailed)
        except (torch._dynamo.exc.BackendCompilerFailed, RuntimeError) as error:
            if mode in self._compiled and not isinstance(error, torch._dynamo.exc.BackendCompilerFailed):
                raise  # an error of the computation itself, not of the compiler
            self._failed.add(mode)
            self._compiled.pop(mode, None)
            reason = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
            warnings.warn(
                f"torch.compile could not compile the {self.what} (mode {mode!r}): {reason.strip()} Running it "
                f"eagerly instead: the same results, without the compiler's speed-up. Install a C++ compiler (or "
                f"set CXX to one) for torch.compile on the CPU, or set compile_step=false to skip the attempt.",
                RuntimeWarning,
                stacklevel=3,
            )
            return self.fn(*args, **kwargs)
        if mode in _CUDA_GRAPH_MODES:
            # A CUDA graph's outputs live in its static memory, which its next replay (the next time step)
            # overwrites: keep copies.
            out = tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) and t.is_cuda else t, out)
        return out
