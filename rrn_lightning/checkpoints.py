"""Checkpoint files read safely, with one clear line for every way a file can be wrong for a model.

    check_checkpoint("runs/.../last.ckpt", model)   # raises ConfigurationError naming the file and the fault

Used by ``rrn generate``, by our modules' ``load_from_checkpoint`` and by the ``rrn`` CLI for ``--ckpt_path``.
"""

from __future__ import annotations

import importlib
import pickle
import re
import zipfile
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any, ClassVar

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.core.saving import CHECKPOINT_PAST_HPARAMS_KEYS
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from .common import ConfigurationError
from .cores import RecurrentCore

__all__ = [
    "CheckpointedTask",
    "check_checkpoint",
    "check_hyperparameters",
    "checkpoint_kind",
    "import_allowed",
    "saved_hyperparameters",
    "upgrade_class_paths",
]

# What a checkpoint's hyperparameters may make us import: our modules and cores, torch's optimizers and
# schedulers (ReduceLROnPlateau is an LRScheduler), and Lightning's CLI instantiator.
ALLOWED_MODULES = ("rrn_lightning", "torch.optim")
ALLOWED_BASES = (RecurrentCore, LightningModule, Optimizer, LRScheduler)
ALLOWED_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
IMPORT_KEYS = ("class_path", "_class_path", "_instantiator")
DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")

# Classes that have moved, by the import path a checkpoint written before the move may record (jsonargparse records
# a class path as the config spelled it: rrn_lightning.SequenceClassifier, or its module's path) -> a path that
# names them now. The public paths, so that a later move inside the package needs no new entry.
MOVED = {
    "rrn_lightning.classifier.SequenceClassifier": "rrn_lightning.SequenceClassifier",
    "rrn_lightning.seq2seq.Seq2Seq": "rrn_lightning.Seq2Seq",
    "rrn_lightning.language_model.LanguageModel": "rrn_lightning.LanguageModel",
    "rrn_lightning.memory.RelationalMemory": "rrn_lightning.RelationalMemory",
    "rrn_lightning.lstm.LSTMCore": "rrn_lightning.LSTMCore",
    "rrn_lightning.core.RecurrentCore": "rrn_lightning.RecurrentCore",
    "rrn_lightning.reference.ReferenceRelationalMemory": "rrn_lightning.cores.ReferenceRelationalMemory",
}

ZIP_MAGIC = b"PK\x03\x04"  # torch.save has written zip archives since torch 1.6; older pickles are not read
VOCABULARY = "the vocabulary size (vocab_size, from the corpus and its min_freq / max_size)"


class CheckpointedTask:
    """What this module reads of a task module's class (``TaskModule`` inherits it): each task class declares
    these, and nothing here names a task class or its attributes.

    Attributes:
        kind: What messages call this kind of model ("sequence classifier"); a checkpoint must hold the same kind
            as the model it is loaded into. A subclass inherits its parent's kind unless it declares its own.
        checkpoint_modules: Top-level submodules whose parameters every checkpoint of the class holds.
        optional_checkpoint_modules: Those it may hold (depending on its arguments).
        checkpoint_settings: For a top-level submodule, the setting that sizes it, for "which setting probably
            differs" when a checkpoint does not fit.
        vocabulary_modules: Submodules whose first dimension is the vocabulary.
        legacy_state_prefixes: State-dict key prefixes that older checkpoints of the class wrote, by the prefix
            that replaced them (``upgrade_state_dict`` renames them).
    """

    kind: ClassVar[str | None] = None
    checkpoint_modules: ClassVar[frozenset[str]] = frozenset()
    optional_checkpoint_modules: ClassVar[frozenset[str]] = frozenset()
    checkpoint_settings: ClassVar[dict[str, str]] = {}
    vocabulary_modules: ClassVar[frozenset[str]] = frozenset()
    legacy_state_prefixes: ClassVar[dict[str, str]] = {}

    @classmethod
    def upgrade_state_dict(cls, state: dict) -> dict:
        """``state`` (changed in place, and returned) with the keys of ``legacy_state_prefixes`` renamed."""
        for key in list(state):
            for old, new in cls.legacy_state_prefixes.items():
                if key.startswith(old):
                    state[new + key[len(old) :]] = state.pop(key)
        return state

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind is not None:
            _TASKS[cls.__name__] = cls

    def training_metric_states(self) -> dict[str, Tensor]:
        """State-dict entries (training metric sums) that a checkpoint may lack: filled in when it loads."""
        return {}

    @classmethod
    def kind_class(cls) -> type[CheckpointedTask]:
        """The class that declares this class's kind (itself, or the parent it inherits the kind from)."""
        return next(c for c in cls.__mro__ if "kind" in c.__dict__)


# Every task class with a kind, by class name (a checkpoint records the class path the config spelled).
_TASKS: dict[str, type[CheckpointedTask]] = {}


def check_checkpoint(
    path: str | PathLike, model: Any = None, *, what: str = "--ckpt_path", overrides: Mapping | None = None
) -> dict:
    """Read a Lightning checkpoint safely (``weights_only=True``, memory-mapped, on the CPU) and return it.

    Raises ``ConfigurationError`` with one line that starts with ``{what} {path}`` and says what is wrong: no such
    file, a directory, not a regular file (``/dev/null``), empty, truncated or damaged, not a checkpoint (random
    bytes, text, a zip archive or a PyTorch file that is not a Lightning checkpoint, a file holding Python objects),
    or hyperparameters that name code outside the allowlist (``check_hyperparameters``; ``overrides``, what the
    caller passes in place of saved values, are checked instead of the values they replace).

    ``model`` adds checks: a LightningModule class, instance or class path (the config's ``model.class_path``):
    the checkpoint must hold the same kind of module (``CheckpointedTask.kind``: read from the recorded
    ``_class_path``, else from the top-level submodules the task classes declare); an instance must also have every
    parameter of the checkpoint with the same shape (the first difference is named with both shapes and the setting
    that probably differs, as the class declares it). The returned dict's tensors are memory-mapped.
    """
    path = Path(path)
    where = f"{what} {path}"
    _check_file(path, where)
    checkpoint = _load(path, where)
    check_hyperparameters({**saved_hyperparameters(checkpoint), **(overrides or {})}, where)
    if model is not None:
        _check_kind(checkpoint, model, where)
        if not isinstance(model, type | str):
            _check_shapes(checkpoint["state_dict"], model, where)
    return checkpoint


def saved_hyperparameters(checkpoint: dict) -> dict:
    """The hyperparameters that ``load_from_checkpoint`` builds a module from: ``hyper_parameters`` over the past
    keys (``hparams``, ``module_arguments``), which Lightning still reads."""
    keys = (*CHECKPOINT_PAST_HPARAMS_KEYS, LightningModule.CHECKPOINT_HYPER_PARAMS_KEY)
    parts = [checkpoint.get(key) for key in keys]
    return {k: v for part in parts if isinstance(part, Mapping) for k, v in part.items()}


def import_allowed(path: str, where: str, bases: tuple[type, ...] = ALLOWED_BASES) -> type:
    """The class that ``path`` names, imported only when it lies under one of ``ALLOWED_MODULES`` and subclasses
    one of ``bases``; anything else raises ``ConfigurationError`` starting with ``where``. A path of a class that
    has moved (``MOVED``) is read as its new path."""
    module_name, _, name = MOVED.get(path, path).rpartition(".")
    if not any(module_name == m or module_name.startswith(f"{m}.") for m in ALLOWED_MODULES):
        raise ConfigurationError(
            f"{where}: {path!r} is not imported: only classes under {' or '.join(ALLOWED_MODULES)} are, so that "
            "a file cannot make us run code of its choosing."
        )
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        raise ConfigurationError(f"{where}: {path!r} does not exist; check the name.") from None
    if not (isinstance(found, type) and issubclass(found, bases)):
        allowed = " or ".join(b.__name__ for b in bases)
        raise ConfigurationError(f"{where}: {path!r} is not a subclass of {allowed}.")
    return found


def upgrade_class_paths(value: Any) -> Any:
    """``value`` (hyperparameters: dicts, lists, strings) with every string that ``MOVED`` lists replaced by the
    class's current path; what holds none is returned as is."""
    if isinstance(value, str):
        return MOVED.get(value, value)
    if isinstance(value, Mapping):
        return {k: upgrade_class_paths(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(upgrade_class_paths(v) for v in value)
    return value


# Model arguments that say how a model trains or runs, not what it is: a checkpoint may be resumed or evaluated
# with other values of them.
NOT_ARCHITECTURE = frozenset({"optimizer", "lr_scheduler", "compile_step"})


def architecture_differences(config_model: Mapping, hparams: Mapping) -> list[tuple[str, Any, Any]]:
    """Where a checkpoint's model (its saved ``hparams``, as the ``rrn`` CLI records them) differs from the config's
    ``model`` (``class_path`` and ``init_args``): ``(key, checkpoint value, config value)`` for the model's and the
    core's class (compared by class name, moved paths upgraded) and every argument both give a value for, less
    NOT_ARCHITECTURE. Under a class that differs nothing more is compared."""
    saved = upgrade_class_paths(dict(hparams))
    checkpoint_model = {
        "class_path": saved.get("_class_path"),
        "init_args": {k: v for k, v in saved.items() if not k.startswith("_")},
    }
    differences: list[tuple[str, Any, Any]] = []

    def compare(key: str, in_checkpoint: Any, in_config: Any) -> None:
        if isinstance(in_checkpoint, Mapping) and isinstance(in_config, Mapping):
            classes = (in_checkpoint.get("class_path"), in_config.get("class_path"))
            if all(classes) and len({str(path).rpartition(".")[2] for path in classes}) == 2:
                differences.append((f"{key}.class_path".lstrip("."), *classes))
                return
            for name in sorted(set(in_checkpoint) & set(in_config) - NOT_ARCHITECTURE - {"class_path"}):
                compare(f"{key}.{name}", in_checkpoint[name], in_config[name])
        elif in_checkpoint is not None and in_config is not None:
            # YAML has no tuples: (8, 8) in a parsed config is [8, 8] in a checkpoint.
            saved, given = (list(v) if isinstance(v, tuple) else v for v in (in_checkpoint, in_config))
            if saved != given:
                differences.append((key.lstrip("."), saved, given))

    compare("", checkpoint_model, upgrade_class_paths(dict(config_model)))
    return differences


def check_hyperparameters(hparams: Mapping, source: str) -> None:
    """Refuse saved hyperparameters that name code outside the allowlist, before anything they name is imported.

    Every ``class_path`` / ``_class_path`` value and every other string that reads as an import path must pass
    ``import_allowed`` (jsonargparse imports both: class paths, and strings given for class or callable
    arguments); ``_instantiator`` must be ``ALLOWED_INSTANTIATOR``. The error starts with ``source`` and says how
    to load a trusted file anyway: pass the objects in, ``load_from_checkpoint(path, core=..., optimizer=...)``.
    """
    for location, path in _import_paths(hparams, ""):
        top = re.split(r"[.\[]", location)[0]
        fix = (
            "_instantiator=None, _class_path=None and the objects that it names: core=..., optimizer=..."
            if top in ("_instantiator", "_class_path")
            else f"{top}=<the object>"
        )
        advice = f" If you trust the file, load it in Python with load_from_checkpoint(path, {fix})."
        where = f"{source}: hyperparameter {location}"
        if location == "_instantiator":
            if path != ALLOWED_INSTANTIATOR:
                raise ConfigurationError(
                    f"{where}={path!r} is refused: only {ALLOWED_INSTANTIATOR} is.{advice}"
                )
        elif not isinstance(path, str):
            raise ConfigurationError(f"{where} must be an import path, got {path!r}.{advice}")
        else:
            try:
                import_allowed(path, where)
            except ConfigurationError as error:
                raise ConfigurationError(f"{error}{advice}") from None


def _import_paths(value, location: str):
    """(location, value) for every import path in ``value``: values of the IMPORT_KEYS and dotted strings."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            where = f"{location}.{key}" if location else str(key)
            if key in IMPORT_KEYS:
                if item is not None:  # None: the caller passed _instantiator=None to bypass it
                    yield where, item
            else:
                yield from _import_paths(item, where)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _import_paths(item, f"{location}[{i}]")
    elif isinstance(value, str) and DOTTED.fullmatch(value):
        yield location, value


def checkpoint_kind(checkpoint: dict) -> set[str]:
    """The task classes (their kind-declaring class names, ``CheckpointedTask.kind_class``) that a checkpoint may
    hold: the one its recorded ``_class_path`` names (written by the ``rrn`` CLI); otherwise those whose declared
    ``checkpoint_modules`` it holds and whose declared modules explain every known top-level submodule in it."""
    hparams = checkpoint.get("hyper_parameters")
    class_path = hparams.get("_class_path") if isinstance(hparams, dict) else None
    named = _TASKS.get(class_path.rpartition(".")[2]) if isinstance(class_path, str) else None
    if named is not None:
        return {named.kind_class().__name__}
    known = set().union(*(t.checkpoint_modules | t.optional_checkpoint_modules for t in _TASKS.values()))
    tops = {name.split(".")[0] for name in checkpoint["state_dict"]} & known
    return {
        task.kind_class().__name__
        for task in _TASKS.values()
        if task.checkpoint_modules <= tops <= task.checkpoint_modules | task.optional_checkpoint_modules
    } or {task.kind_class().__name__ for task in _TASKS.values()}


def _check_file(path: Path, where: str) -> None:
    if not path.exists():
        raise ConfigurationError(
            f"{where}: no such file; check the path (rrn fit writes checkpoints to "
            "<default_root_dir>/<run>/version_<n>/checkpoints/)."
        )
    if path.is_dir():
        found = next(path.rglob("*.ckpt"), None)
        example = f", e.g. {found}" if found is not None else ""
        raise ConfigurationError(f"{where} is a directory; give a .ckpt file{example}.")
    if not path.is_file():
        raise ConfigurationError(f"{where} is not a regular file (a device or a pipe); give a .ckpt file.")
    if path.stat().st_size == 0:
        raise ConfigurationError(
            f"{where} is empty (0 bytes): its writer probably stopped while saving; use another checkpoint "
            "of the run."
        )
    with path.open("rb") as file:
        head = file.read(4)
    if head != ZIP_MAGIC:
        kind = "a text file" if _is_text(path) else "neither a zip archive nor text"
        raise ConfigurationError(
            f"{where} is not a checkpoint: it is {kind}, while checkpoints are the zip archives written by "
            "torch.save; check the path."
        )
    if not zipfile.is_zipfile(path):  # the zip's directory is at its end: lost when a write is cut short
        raise ConfigurationError(
            f"{where} is truncated or damaged (its zip directory is missing): its writer probably stopped "
            "while saving; use another checkpoint of the run."
        )
    with zipfile.ZipFile(path) as archive:
        if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in archive.namelist()):
            raise ConfigurationError(
                f"{where} is a zip archive but not a PyTorch checkpoint (no data.pkl in it); check the path."
            )


def _is_text(path: Path) -> bool:
    with path.open("rb") as file:
        sample = file.read(4096)
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\0" not in sample


def _load(path: Path, where: str) -> dict:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (
        Exception
    ) as error:  # damage shows as RuntimeError, OSError, EOFError, struct.error, UnpicklingError
        # torch's refusal of an object advises weights_only=False: wrong for a file that is not ours; name it.
        refused = (
            re.search(r"GLOBAL ([\w.]+)", str(error)) if isinstance(error, pickle.UnpicklingError) else None
        )
        if refused:
            raise ConfigurationError(
                f"{where} is not a checkpoint that loads safely: it holds Python objects ({refused.group(1)}) "
                "beyond tensors, numbers and strings, which rrn never writes; check the path."
            ) from None
        raise ConfigurationError(
            f"{where} is damaged: PyTorch cannot read its contents; use another checkpoint of the run."
        ) from None
    if isinstance(checkpoint, dict) and {"state_dict", "pytorch-lightning_version"} <= checkpoint.keys():
        return checkpoint
    if (
        isinstance(checkpoint, dict)
        and checkpoint
        and all(isinstance(v, torch.Tensor) for v in checkpoint.values())
    ):
        held = "a bare state_dict (load it with model.load_state_dict)"
    else:
        held = f"a {type(checkpoint).__name__} without state_dict and pytorch-lightning_version"
    raise ConfigurationError(f"{where} is a PyTorch file but not a Lightning checkpoint: it holds {held}.")


def _check_kind(checkpoint: dict, model: Any, where: str) -> None:
    if isinstance(model, str):  # a class path: named, not imported
        cls = _TASKS.get(model.rpartition(".")[2]) if model.startswith("rrn_lightning.") else None
    else:
        cls = model if isinstance(model, type) else type(model)
    if not (isinstance(cls, type) and issubclass(cls, CheckpointedTask) and cls.kind is not None):
        return
    expected = cls.kind_class()
    found = checkpoint_kind(checkpoint)
    if expected.__name__ not in found:
        held = " or ".join(sorted(found))
        raise ConfigurationError(
            f"{where} holds a {held}, not a {expected.kind} ({expected.__name__}); use a checkpoint of a "
            f"{expected.__name__} run, or the config that the checkpoint was trained with."
        )


def _check_shapes(theirs: dict, model: Any, where: str) -> None:
    ours = model.state_dict()
    task = model if isinstance(model, CheckpointedTask) else CheckpointedTask()
    theirs = task.upgrade_state_dict(dict(theirs))
    # Training metric sums that older checkpoints lack: the module fills them in when it loads.
    optional = task.training_metric_states()
    for name, tensor in ours.items():
        if name not in theirs:
            if not getattr(model, "strict_loading", True) or name in optional:
                continue
            raise ConfigurationError(
                f"{where} does not fit this model: it lacks {name}; "
                f"{_probable_setting(task, name)} probably differs from the training run's."
            )
        if tuple(theirs[name].shape) != tuple(tensor.shape):
            setting = _probable_setting(task, name, tuple(theirs[name].shape), tuple(tensor.shape))
            raise ConfigurationError(
                f"{where} does not fit this model: {name} has shape {list(theirs[name].shape)} "
                f"in the checkpoint but {list(tensor.shape)} here; {setting} probably differs "
                "from the training run's."
            )
    extra = next((name for name in theirs if name not in ours), None)
    if extra is not None and getattr(model, "strict_loading", True):
        raise ConfigurationError(
            f"{where} does not fit this model: it has {extra}, which this model lacks; "
            f"{_probable_setting(task, extra)} probably differs from the training run's."
        )


def _probable_setting(task: CheckpointedTask, name: str, theirs: tuple = (), ours: tuple = ()) -> str:
    top = name.split(".")[0]
    # Rows of the embedding and the output layers are words: a different first size is a different vocabulary.
    if top in task.vocabulary_modules and theirs[:1] != ours[:1]:
        return VOCABULARY
    return task.checkpoint_settings.get(top, "the model's configuration")
