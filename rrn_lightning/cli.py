"""The ``rrn`` command: LightningCLI over our LightningModules and DataModules.

    rrn fit --config experiments/nth_farthest/rmc_cpu.yaml
    rrn fit --config experiments/nth_farthest/rmc_cpu.yaml --model.init_args.core.init_args.mem_slots 8
    rrn test --config experiments/nth_farthest/rmc_cpu.yaml --ckpt_path runs/.../checkpoints/last.ckpt

Runs log to TensorBoard under ``--trainer.default_root_dir`` (default ``runs/``), in a folder named after the
config file (``--run_name`` to choose), with checkpoints beside the event files; ``fit`` also logs the learning
rate (a ``LearningRateMonitor``, unless the config names one or turns the logger off).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .checks import ConfigurationError

# Our generated training streams run in the main process (no workers), where their __len__ is exact.
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
# Lightning's own use of a torch API that torch deprecated; nothing a user can act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")

LR_MONITOR = "lightning.pytorch.callbacks.LearningRateMonitor"

DESCRIPTION = """\
rrn: train and evaluate relational recurrent networks (the Relational Memory Core of Santoro et al., 2018)
and LSTM baselines. Configs for every task and core live in experiments/; start with
`rrn fit --config experiments/nth_farthest/rmc_cpu.yaml`, and see `rrn fit --help` for every option.
`rrn generate --checkpoint PATH --prompt "..."` samples text from a language model's checkpoint.
"""


class RRNCLI(LightningCLI):
    """LightningCLI with data-derived sizes linked into the model, a checkpoint callback and a named
    TensorBoard run under ``trainer.default_root_dir``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="Name of the TensorBoard run folder under trainer.default_root_dir "
            "(default: from the config file, e.g. nth_farthest_rmc_cpu).",
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.filename": "epoch{epoch}-step{step}",
                "checkpoint.auto_insert_metric_name": False,
                "checkpoint.save_last": True,
            }
        )
        # Sizes that only the data knows, stated once: the data module computes them, the model receives them.
        # A link whose source the chosen data module lacks is skipped (jsonargparse), so each task family has its
        # own: classification data has input_size and num_classes, language-modelling data has vocab_size.
        parser.link_arguments(
            "data.input_size", "model.init_args.core.init_args.input_size", apply_on="instantiate"
        )
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="instantiate")

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as error:
            # A value only the class itself can judge (mem_slots=0, ...): the class's message, without a traceback.
            # jsonargparse re-raises it as a plain ValueError, so look for ours along the chain; anything else is
            # not a configuration problem and keeps its traceback.
            cause = _find_configuration_error(error)
            if cause is None:
                raise
            self.parser.exit(2, f"rrn: error: invalid configuration: {cause}\n")

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except ValueError as error:  # e.g. a checkpoint trained on another vocabulary
            cause = _find_configuration_error(error)
            if cause is None:
                raise
            self.parser.exit(2, f"rrn: error: {cause}\n")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.trainer.logger in (None, True):
            name = config.run_name or _run_name(config.get("config"))
            config.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.TensorBoardLogger",
                init_args=Namespace(save_dir=config.trainer.default_root_dir, name=name),
            )
        if self.subcommand == "fit" and config.trainer.logger is not False:
            # The learning rate beside the loss curves (lr-Adam, ...), whatever the scheduler makes of it.
            callbacks = list(config.trainer.callbacks or [])
            if not any(str(getattr(c, "class_path", "")).endswith("LearningRateMonitor") for c in callbacks):
                callbacks.append(Namespace(class_path=LR_MONITOR, init_args=Namespace()))
                config.trainer.callbacks = callbacks


def _find_configuration_error(error: BaseException) -> ConfigurationError | None:
    seen = 0
    while error is not None and seen < 20:
        if isinstance(error, ConfigurationError):
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def _run_name(config_paths) -> str:
    """``experiments/nth_farthest/rmc_cpu.yaml`` -> ``nth_farthest_rmc_cpu``; ``rrn`` without a config file."""
    if not config_paths:
        return "rrn"
    path = Path(str(config_paths[-1]))
    return f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem


def cli_main(args: list[str] | None = None, run: bool = True) -> RRNCLI:
    """Build and run the ``rrn`` CLI; ``args`` (a list of strings, as on the command line) lets tests call it
    in-process. Returns the ``LightningCLI`` object (its ``trainer``, ``model`` and ``datamodule``)."""
    return RRNCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        trainer_defaults={"default_root_dir": "runs"},
        parser_kwargs={"description": DESCRIPTION, "default_env": False},
        save_config_kwargs={"overwrite": True},
    )


def main() -> None:
    """The ``rrn`` console script (LightningCLI reads ``sys.argv`` itself; ``rrn generate`` is ours)."""
    if len(sys.argv) > 1 and sys.argv[1] == "generate":
        from .generate import main as generate_main

        sys.exit(generate_main(sys.argv[2:]))
    cli_main()


if __name__ == "__main__":
    main()
