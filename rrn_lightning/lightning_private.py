"""Every use of a private name of Lightning (and of argparse and torch's SummaryWriter) in rrn_lightning, and nowhere
else: the rest of the package calls the functions and hooks below. Each says why no public way exists.

Checked on Lightning 2.6.0 to 2.6.6 (pyproject.toml allows >=2.6,<2.7; .ci/run tests the lowest). Before 2.6:
``LightningCLI._parse_ckpt_path`` is never called before 2.5.5, and ``load_from_checkpoint`` has no ``weights_only``.
"""

from __future__ import annotations

from typing import Any

from lightning.fabric.utilities.cloud_io import _load
from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

__all__ = [
    "HookedCLI",
    "HookedCheckpoint",
    "accumulating",
    "add_subcommand",
    "checkpoint_logged_steps",
    "load_checkpoint",
    "logged_step",
    "mark_checkpoint_saved",
    "option_actions",
    "plain_hparams",
    "subcommand_choices",
    "subcommand_parsers",
    "tensorboard_hparams",
    "write_summaries",
]


# ---------------------------------------------------------------------------------------------- the CLI
class HookedCLI(LightningCLI):
    """LightningCLI whose private steps call public-named hooks that ``RRNCLI`` implements. LightningCLI offers no
    public hook for these three: adding subcommands of our own to its parser, wrapping a subcommand's run (to turn
    our errors into one line), and reading ``--ckpt_path`` before the classes are built."""

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        super()._add_subcommands(parser, **kwargs)
        self.after_subcommands_added(parser)

    def _run_subcommand(self, subcommand: str) -> None:
        self.run_subcommand(subcommand)

    def _parse_ckpt_path(self) -> None:
        self.resolve_checkpoint()

    def after_subcommands_added(self, parser: LightningArgumentParser) -> None:
        """Called once LightningCLI has added fit, validate, test and predict to ``parser``."""

    def run_subcommand(self, subcommand: str) -> None:
        """Runs ``subcommand`` (the Trainer's method); override to wrap it, calling ``run_lightning_subcommand``."""
        self.run_lightning_subcommand(subcommand)

    def run_lightning_subcommand(self, subcommand: str) -> None:
        LightningCLI._run_subcommand(self, subcommand)

    def resolve_checkpoint(self) -> None:
        """After parsing, before the classes are built: Lightning's own step reads the checkpoint's
        hyperparameters into the config."""
        LightningCLI._parse_ckpt_path(self)

    def subcommand_parser(self, subcommand: str) -> LightningArgumentParser:
        """The parser of one subcommand (for ``--print_config``'s dump)."""
        return self._parser(subcommand)


def subcommand_parsers(parser: LightningArgumentParser) -> dict[str, LightningArgumentParser]:
    """The subcommands' parsers by name (argparse keeps them in a private map of its subparsers action)."""
    return parser._subcommands_action._name_parser_map


def subcommand_choices(parser: LightningArgumentParser) -> list[Any]:
    """The subcommands' entries of the ``--help`` listing (argparse's private pseudo-actions), to set their help."""
    return parser._subcommands_action._choices_actions


def add_subcommand(
    parser: LightningArgumentParser, name: str, subparser: LightningArgumentParser, help: str
) -> None:
    """A subcommand of our own beside Lightning's (jsonargparse's public ``add_subcommands`` can be called once per
    parser, and LightningCLI has called it)."""
    parser._subcommands_action.add_subcommand(name, subparser, help=help)


def option_actions(parser: LightningArgumentParser) -> list[Any]:
    """A parser's options (argparse has no public list of them), to reword their help."""
    return parser._actions


# ---------------------------------------------------------------------------------------------- the loops
def logged_step(trainer: Trainer) -> int:
    """The step Lightning's loggers write at (the batches that stepped an optimizer; ``global_step`` differs under
    manual optimisation and is one ahead during validation in the middle of an epoch)."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def checkpoint_logged_steps(checkpoint: dict) -> int:
    """``logged_step`` as a checkpoint saved it (the fit loop's state), else its global step."""
    loops = checkpoint.get("loops", {})
    epoch_loop = loops.get("fit_loop", {}).get("epoch_loop.state_dict", {})
    return int(epoch_loop.get("_batches_that_stepped", checkpoint.get("global_step", 0)))


def accumulating(trainer: Trainer) -> bool:
    """Whether the batch just seen accumulates gradients without an optimizer step (Lightning then logs nothing)."""
    return trainer.fit_loop._should_accumulate()


# ---------------------------------------------------------------------------------------------- checkpoints
class HookedCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose one private writer calls ``write_checkpoint``: the only place every checkpoint file
    (top-k, last, on a signal) passes through, with no public hook around the write itself."""

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        self.write_checkpoint(trainer, filepath)

    def write_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        ModelCheckpoint._save_checkpoint(self, trainer, filepath)


def mark_checkpoint_saved(callback: ModelCheckpoint, trainer: Trainer, filepath: str) -> None:
    """What Lightning's own writer records after a write (a write of ours replaces it): the step, so that the same
    step is not saved twice, and the file, for ``save_last`` links."""
    callback._last_global_step_saved = trainer.global_step
    callback._last_checkpoint_saved = filepath


def load_checkpoint(path_or_file: Any, map_location: Any = "cpu", weights_only: bool = True) -> Any:
    """Lightning's checkpoint reader, which also reads open files and fsspec URLs (``torch.load`` reads neither)."""
    return _load(path_or_file, map_location=map_location, weights_only=weights_only)


# ---------------------------------------------------------------------------------------------- TensorBoard
def plain_hparams(params: Any) -> dict[str, Any]:
    """Hyperparameters as a dict (from a Namespace too), Lightning's own bookkeeping (keys starting with ``_``,
    such as ``_instantiator``) left out."""
    return {k: v for k, v in _convert_params(params).items() if not str(k).startswith("_")}


def tensorboard_hparams(params: dict[str, Any]) -> dict[str, Any]:
    """A hyperparameter dict as TensorBoardLogger writes it: flattened to ``a/b`` keys, values TensorBoard shows."""
    return TensorBoardLogger._sanitize_params(_flatten_dict(params))


def write_summaries(experiment: Any, summaries: Any) -> None:
    """Raw summaries (the HPARAMS record) into a SummaryWriter's event file: its public ``add_hparams`` would open
    another run folder and log placeholder values for the metrics."""
    writer = experiment._get_file_writer()
    for summary in summaries:
        writer.add_summary(summary)
