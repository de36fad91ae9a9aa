"""The ``rrn`` command: LightningCLI over our LightningModules and DataModules.

    rrn fit --config experiments/nth_farthest/rmc_cpu.yaml
    rrn fit --config experiments/nth_farthest/rmc_cpu.yaml --model.init_args.core.init_args.mem_slots 8
    rrn fit --config experiments/nth_farthest/rmc_cpu.yaml --ckpt_path last     # continue the latest run
    rrn test --config experiments/nth_farthest/rmc_cpu.yaml --ckpt_path last

Runs log to TensorBoard under ``--trainer.default_root_dir`` (default ``runs/``), in a folder named after the
config file (``--run_name`` to choose), with checkpoints beside the event files; ``fit`` also logs the learning
rate (a ``LearningRateMonitor``, unless the config names one or turns the logger off). A checkpoint given with
``--ckpt_path`` (``last``: the latest run's ``last.ckpt``) brings its run folder along: ``fit`` continues there, the
other subcommands log and write there. See ``runs.py`` for what checkpoints hold and when they are written.

``rrn generate`` (``generate.py``) samples text from a language model's checkpoint and ``rrn compare``
(``compare.py``) tabulates and plots runs; they are listed in ``rrn --help`` with the others but run on their own,
without building a Trainer.

The optimizer and the LR scheduler are the model's arguments (``--model.init_args.optimizer``, ``optimizer:`` under
``model.init_args``), set one way only: LightningCLI's own top-level ``--optimizer`` / ``--lr_scheduler``, which
would replace them with only a warning, are switched off and refused with a message saying where they go.
"""

from __future__ import annotations

import difflib
import inspect
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.model_helpers import is_overridden

from . import compare, generate
from .checkpoints import (
    architecture_differences,
    check_checkpoint,
    saved_hyperparameters,
    upgrade_class_paths,
)
from .common import ConfigurationError
from .insight import Insight
from .lightning_private import (
    HookedCLI,
    add_subcommand,
    checkpoint_logged_steps,
    option_actions,
    subcommand_choices,
    subcommand_parsers,
)
from .runs import NonFiniteLoss, NonFiniteLossError, RunCheckpoint, latest_checkpoint, run_of_checkpoint
from .tasks import LanguageModel, TaskModule

# Our generated training streams run in the main process (no workers), where their __len__ is exact.
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
# rrn predict keeps the predictions in the loader's order itself (PredictionWriter); Lightning's per-example batch
# indices, which it cannot find for a loader of ready-made batches, are not used.
warnings.filterwarnings("ignore", message=r"Couldn't infer the batch indices fetched from your dataloader")
# Lightning's own use of a torch API that torch deprecated; nothing a user can act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")

LR_MONITOR = "lightning.pytorch.callbacks.LearningRateMonitor"

DESCRIPTION = """\
rrn: train and evaluate relational recurrent networks (the Relational Memory Core of Santoro et al., 2018)
and LSTM baselines. Configs for every task and core live in experiments/; start with
`rrn fit --config experiments/nth_farthest/rmc_cpu.yaml`, and see `rrn fit --help` for every option.
`rrn generate --checkpoint PATH --prompt "..."` samples text from a language model's checkpoint;
`rrn compare runs/ [--plot FILE.png]` tabulates runs as Markdown and plots their validation curves.
"""

# Our help lines for Lightning's subcommands (its own are the Trainer's docstrings cut mid-sentence), and --ckpt_path's.
SUBCOMMAND_HELP = {
    "fit": "Train a model from a config; --ckpt_path last continues its latest run.",
    "validate": "Evaluate a checkpoint on the validation split.",
    "test": "Evaluate a checkpoint on the test split.",
    "predict": "Write a checkpoint's predictions into its run folder.",
}
CKPT_PATH_HELP = (
    "A checkpoint file, or 'last': the latest checkpoint of the config's run (runs/<name>/version_N/checkpoints/"
    "last.ckpt, the newest N). Given without --config, a file reads its run's config.yaml; with --config, a "
    "checkpoint of another model is refused."
)
# LightningCLI's own optimizer options, switched off (auto_configure_optimizers=False): where each one goes instead.
MODEL_ARGUMENTS = {"optimizer": "model.init_args.optimizer", "lr_scheduler": "model.init_args.lr_scheduler"}


class RRNArgumentParser(LightningArgumentParser):
    """Lightning's parser with jsonargparse's error reports (usage, then a tree of union subtypes, 80 lines and more)
    cut to what is wrong and where, in at most three lines (``short_parser_error``)."""

    # The --config files of the command being parsed, to name in YAML errors. Set on the class by
    # RRNCLI.parse_arguments: the error is reported by the subcommand's parser, not the one that parses.
    config_files: tuple[str, ...] = ()

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(short_parser_error(message, prog, self.config_files) + "\n")
        self.exit(2)


def short_parser_error(message: str, prog: str, config_files: Sequence[str] = ()) -> str:
    """jsonargparse's error ``message`` as at most three lines: the key and what is wrong with it, the nearest valid
    argument or the valid values, and where to read more."""
    lines = [line.strip() for line in message.strip().splitlines()]
    key = re.match(r'Parser key "([^"]+)"', lines[0])
    where = f"--{key.group(1)}" if key else prog
    tip = f"tip: {prog} --help lists the options"
    unknown = [re.search(r"Option '([^']+)' is not accepted", line) for line in lines]
    unknown = [match.group(1) for match in unknown if match]
    if unknown:  # a misspelled argument of a class given by class_path
        classes = re.findall(r"Problem with given class_path '([^']+)'", message)
        owner = classes[-1] if classes else None
        accepted = _init_arguments(owner) if owner else []
        nearest = difflib.get_close_matches(unknown[0], accepted, n=1)
        hint = f"; did you mean '{nearest[0]}'?" if nearest else ""
        name = owner.rpartition(".")[2] if owner else "the class"
        nested = re.search(r"NestedArg\(key='([^']+)'", message)  # given on the command line
        option, help_key = f"{where}: ", "--help"
        if key and nested:
            option = f"--{key.group(1)}.init_args.{nested.group(1)}: "
            owner_key = option[2:-2].rpartition(".init_args.")[0]
            help_key = f"--{owner_key}.help {owner}"
        elif key and owner:
            help_key = f"--{key.group(1)}.help {owner}"
        return f"rrn: error: {option}{name} has no argument '{unknown[0]}'{hint}\ntip: {prog} {help_key} lists them"
    given = next(
        (line.removeprefix("Given value:").strip() for line in lines if line.startswith("Given value:")), None
    )
    nested_value = re.fullmatch(r"NestedArg\(key='([^']+)', val='(.*)'\)", given or "")
    if key and nested_value:  # --model.init_args.X=V on the command line
        where, given = f"--{key.group(1)}.init_args.{nested_value.group(1)}", nested_value.group(2)
    choices = [value for group in re.findall(r"Literal\[([^\]]*)\]", message) for value in group.split(", ")]
    if choices and given is not None:  # a value outside a set of choices
        unique = list(dict.fromkeys(choice.strip("'") for choice in choices))
        nearest = difflib.get_close_matches(given, unique, n=1)
        hint = f"; did you mean {nearest[0]}?" if nearest else ""
        return f"rrn: error: {where}={given} is not a valid value{hint}\nvalid values: {', '.join(unique)}"
    expected = re.findall(r"Expected a <class '([^']+)'>", message)
    if expected and given is not None:  # a value of the wrong type
        kinds = " or ".join(dict.fromkeys("null" if kind == "NoneType" else kind for kind in expected))
        return f"rrn: error: {where}={given} is not a valid value: expected {kinds}\n{tip}"
    yaml_at = re.findall(r'in "<unicode string>", line (\d+), column (\d+)', message)
    if message.startswith("Problems parsing config") and yaml_at:  # YAML syntax
        files = " or ".join(config_files) or "the config"
        problem = "; ".join(line for line in lines[1:] if not line.startswith("in ")) or lines[0]
        line_number, column = yaml_at[0]
        return f"rrn: error: {files}, line {line_number}, column {column}: YAML syntax: {problem}\n{tip}"
    if message.startswith("the following arguments are required"):
        subcommand = re.search(r"required: (\w+)\.", message)
        command = f"rrn {subcommand.group(1)}" if subcommand else prog
        return (
            f"rrn: error: {lines[0]}\n"
            f"tip: {command} --config experiments/<task>/<core>.yaml, or --ckpt_path FILE of a run"
        )
    first = f"{where}: {lines[0][key.end() + 1 :].strip()}" if key else lines[0]
    if len(lines) <= 2:
        return "\n".join([f"rrn: error: {first}", *lines[1:]])
    # Anything else: the first line and the most specific (the most indented) of the rest.
    raw = message.strip().splitlines()
    detail = max(raw[1:], key=lambda line: len(line) - len(line.lstrip())).strip()
    return f"rrn: error: {first} {detail}\n{tip}"


def _option_values(args: list[str], *names: str) -> list[str]:
    """The values given to an option on a command line, as ``--name VALUE`` or ``--name=VALUE``, in order."""
    values = []
    for index, arg in enumerate(map(str, args)):
        if arg in names and index + 1 < len(args):
            values.append(str(args[index + 1]))
        elif arg.partition("=")[0] in names and "=" in arg:
            values.append(arg.partition("=")[2])
    return values


# --print_config's flags, as jsonargparse names them -> the keyword of its parser's dump.
PRINT_CONFIG_FLAGS = {"skip_default": "skip_default", "skip_unset": "skip_unset", "comments": "with_comments"}


def _take_print_config(args: list[str]) -> tuple[list[str], str | None]:
    """The arguments without ``--print_config[=FLAGS]``, and its flags ("" for none; None where not given)."""
    kept, flags = [], None
    for arg in args:
        if arg == "--print_config" or str(arg).startswith("--print_config="):
            flags = str(arg).partition("=")[2]
        else:
            kept.append(arg)
    return kept, flags


def _run_config_file(ckpt_path: str) -> Path | None:
    """Where the config.yaml of a checkpoint's run is (``runs/<name>/version_N/config.yaml``); None for a checkpoint
    outside a run folder."""
    home = run_of_checkpoint(ckpt_path)
    return None if home is None else Path(home[0], home[1], f"version_{home[2]}", "config.yaml")


def _init_arguments(class_path: str) -> list[str]:
    """The argument names of the class that ``class_path`` names, which the parser has imported already; [] where it
    cannot be found."""
    module_name, _, name = class_path.rpartition(".")
    module = sys.modules.get(module_name)
    cls = getattr(module, name, None) if module is not None else None
    if cls is None:
        return []
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]


class RRNCLI(HookedCLI):
    """LightningCLI with data-derived sizes linked into the model, a run folder per config under
    ``trainer.default_root_dir``, checkpoints that resume exactly, and a guard against non-finite losses."""

    _print_config_flags: str | None = None  # --print_config's, taken out of the arguments by parse_arguments

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="Name of the TensorBoard run folder under trainer.default_root_dir "
            "(default: from the config file, e.g. nth_farthest_rmc_cpu).",
        )
        parser.add_argument(
            "--allow_fresh_start",
            type=bool,
            default=False,
            help="With --ckpt_path last: start a new run when the config has no checkpoint to resume yet, instead "
            "of failing (for job scripts that may be requeued).",
        )
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults(
            {"checkpoint.filename": "epoch{epoch}-step{step}", "checkpoint.auto_insert_metric_name": False}
        )
        parser.add_lightning_class_args(NonFiniteLoss, "nonfinite")
        # What TensorBoard shows beyond the task's scalars (attention maps, gates, text, HPARAMS); insight.py.
        parser.add_lightning_class_args(Insight, "insight")
        # Sizes that only the data knows, stated once: the data module computes them, the model receives them.
        # A link whose source the chosen data module lacks is skipped (jsonargparse), so each task family has its
        # own: classification data has input_size and num_classes, language-modelling data has vocab_size.
        parser.link_arguments(
            "data.input_size", "model.init_args.core.init_args.input_size", apply_on="instantiate"
        )
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.init_args.class_names", apply_on="instantiate")
        parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="instantiate")
        # The words themselves, passed in rather than read by the model from trainer.datamodule: the model says
        # what it needs, and the data module knows nothing of models.
        parser.link_arguments(
            "data.vocab", "model.init_args.vocab", compute_fn=_vocab_words, apply_on="instantiate"
        )

    def after_subcommands_added(self, parser: LightningArgumentParser) -> None:
        # `rrn generate` and `rrn compare` are listed beside fit / validate / test / predict (with their options, for
        # `rrn --help`), but cli_main hands them to their main before LightningCLI parses anything: no Trainer.
        for name, command in (("generate", generate), ("compare", compare)):
            command_parser = LightningArgumentParser(description=command.DESCRIPTION)
            command.add_arguments(command_parser)
            add_subcommand(parser, name, command_parser, help=command.DESCRIPTION)
        # Lightning's help lines are the first lines of the Trainer's docstrings, cut mid-sentence; ours are whole
        # sentences, and --ckpt_path says what `last` means here.
        for action in subcommand_choices(parser):
            if action.dest in SUBCOMMAND_HELP:
                action.help = SUBCOMMAND_HELP[action.dest]
        parsers = subcommand_parsers(parser)
        parsers["predict"].add_argument(
            "--predict_split",
            type=Literal["validation", "test"] | None,
            default=None,
            help="The evaluation split to predict, validation or test (default: the data module's predict_split, "
            "test unless the config says otherwise); its targets are saved beside the predictions.",
        )
        for name, subparser in parsers.items():
            if name in SUBCOMMAND_HELP:
                subparser.description = SUBCOMMAND_HELP[name]
            for action in option_actions(subparser):
                if action.dest == "ckpt_path" and name in SUBCOMMAND_HELP:
                    action.help = CKPT_PATH_HELP

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        given = sys.argv[1:] if args is None else args
        if isinstance(given, list | tuple):
            for arg in given:
                name = str(arg).removeprefix("--").split("=")[0].split(".")[0]
                if str(arg).startswith("--") and name in MODEL_ARGUMENTS:
                    target = MODEL_ARGUMENTS[name]
                    parser.exit(
                        2,
                        f"rrn: error: {arg} is not an option: the {name.replace('_', ' ')} is the model's argument, "
                        f"set with --{target} (e.g. --{target}=torch.optim.SGD --{target}.lr=0.1, or under "
                        f"{target.replace('.', ': ')} in the config); one place, so that nothing replaces it "
                        "silently.\n",
                    )
            RRNArgumentParser.config_files = tuple(_option_values(list(given), "--config", "-c"))
            without_print, self._print_config_flags = _take_print_config(list(given))
            with_config = self._with_run_config(parser, without_print)
            if with_config != list(given):
                args = with_config
                # Lightning warns when args are given beside sys.argv; here they are sys.argv with the run's config.
                warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
        super().parse_arguments(parser, args)

    @staticmethod
    def _with_run_config(parser: LightningArgumentParser, given: list[str]) -> list[str]:
        """``rrn fit|validate|test|predict --ckpt_path FILE`` without ``--config``: the config of FILE's run
        (``config.yaml`` in its run folder) goes first, so the checkpoint alone rebuilds its model and data."""
        if not given or given[0] not in ("fit", "validate", "test", "predict"):
            return given
        paths = _option_values(given, "--ckpt_path")
        path = paths[-1] if paths else None
        if (
            _option_values(given, "--config", "-c")
            or path in (None, "last", "best", "hpc")
            or not Path(path).is_file()
        ):
            return given  # a config of its own, or no checkpoint file (the usual errors say what is missing)
        config = _run_config_file(path)
        if config is None or not config.is_file():
            parser.exit(
                2,
                f"rrn: error: --ckpt_path {path} has no run folder with a config.yaml beside it (runs/<name>/"
                "version_N/checkpoints/); give the config it was trained with: --config FILE.\n",
            )
        return [given[0], "--config", str(config), *given[1:]]

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

    def run_subcommand(self, subcommand: str) -> None:
        try:
            ckpt_path = self.config_init[subcommand].get("ckpt_path")
            if ckpt_path not in (None, "best", "hpc"):
                check_checkpoint(ckpt_path, self.model)
            if subcommand == "predict" and not is_overridden("predict_step", self.model):
                raise ConfigurationError(
                    f"rrn predict: {type(self.model).__name__} has no predictions to write; use `rrn test` for its "
                    "metrics"
                    + (" or `rrn generate` for text." if isinstance(self.model, LanguageModel) else ".")
                )
            self.run_lightning_subcommand(subcommand)
        except ValueError as error:  # e.g. a checkpoint trained on another vocabulary
            cause = _find_configuration_error(error)
            if cause is None:
                raise
            self.parser.exit(2, f"rrn: error: {cause}\n")
        except NonFiniteLossError as error:
            self.parser.exit(1, f"rrn: error: {error}\n")
        except SIGTERMException:
            callback = self.trainer.checkpoint_callback
            written = callback.last_words() if isinstance(callback, RunCheckpoint) else ""
            self.parser.exit(
                143,
                f"rrn: stopped by SIGTERM at step {self.trainer.global_step}{written}; continue with the same "
                "command and --ckpt_path last.\n",
            )

    def resolve_checkpoint(self) -> None:
        # The checkpoint's hyperparameters go into the config here (Lightning's own step, done on the checked
        # file), importing the class paths they name, so the run is resolved and the file checked first: a
        # missing or damaged file, another kind of model or a class path outside the allowlist ends in one error
        # line, and nothing is imported from it. Class paths that have moved are read as their new paths.
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        name = config.run_name or _run_name(config.get("config"))
        # The logger's folder as an absolute path, as run_of_checkpoint gives it on a resume: the checkpoint
        # callback's dirpath is then the same string in the run and in its resumption, so Lightning reloads the
        # best-k tracking (it drops it when the dirpath differs, even a relative one for the same folder).
        home = Path(config.trainer.default_root_dir).expanduser().resolve()
        self._run_home = {"save_dir": str(home), "name": name, "version": None}
        ckpt_path = config.get("ckpt_path")
        if ckpt_path == "last":
            found = latest_checkpoint(config.trainer.default_root_dir, name)
            if found is None and not (subcommand == "fit" and config.allow_fresh_start):
                fresh = " or add --allow_fresh_start=true," if subcommand == "fit" else ""
                where = Path(config.trainer.default_root_dir, name, "version_N", "checkpoints", "last.ckpt")
                self.parser.exit(
                    2,
                    f"rrn: error: --ckpt_path last: run {name!r} has no checkpoint to resume: no {where}. Leave "
                    f"out --ckpt_path to start a new run,{fresh} choose the run with --run_name, or give a "
                    "checkpoint file.\n",
                )
            ckpt_path = config.ckpt_path = None if found is None else str(found)
        checkpoint = None
        if ckpt_path not in (None, "best", "hpc"):
            try:
                checkpoint = check_checkpoint(ckpt_path, getattr(config.get("model"), "class_path", None))
            except ConfigurationError as error:
                self.parser.exit(2, f"rrn: error: {error}\n")
            home = run_of_checkpoint(ckpt_path)
            if home is not None:
                self._run_home = {"save_dir": str(home[0]), "name": home[1], "version": home[2]}
                if subcommand == "fit":
                    # Events the interrupted run wrote after this checkpoint are hidden: no step appears twice.
                    self._run_home["purge_step"] = checkpoint_logged_steps(checkpoint) + 1
                else:  # the training run's config.yaml stays as it was
                    self.save_config_kwargs["config_filename"] = f"config_{subcommand}.yaml"
        if subcommand and checkpoint is not None:
            self._refuse_another_architecture(ckpt_path, config.get("model"), checkpoint)
            self._config_from_checkpoint(subcommand, checkpoint)

    def _refuse_another_architecture(self, ckpt_path: str, model: Namespace | None, checkpoint: dict) -> None:
        """A checkpoint of another model than the config's (class, core or any architecture argument) ends the
        command with one line naming the keys that differ, instead of silently replacing the config's model."""
        hparams = saved_hyperparameters(checkpoint)
        if not isinstance(model, Namespace) or "_class_path" not in hparams:
            return
        differences = architecture_differences(model.as_dict(), hparams)
        if not differences:
            return
        shown = "; ".join(
            f"model.{key}: {in_config!r} here, {in_checkpoint!r} in the checkpoint"
            for key, in_checkpoint, in_config in differences[:4]
        )
        more = f" (and {len(differences) - 4} more)" if len(differences) > 4 else ""
        config = _run_config_file(ckpt_path)
        config_file = "" if config is None else f" ({config})"
        self.parser.exit(
            2,
            f"rrn: error: --ckpt_path {ckpt_path} holds another model than the config builds: {shown}{more}. Use "
            f"the config the checkpoint was trained with{config_file}, or leave out --ckpt_path to start anew.\n",
        )

    def _config_from_checkpoint(self, subcommand: str, checkpoint: dict) -> None:
        """LightningCLI's ``_parse_ckpt_path``, on the checked checkpoint: the model's saved hyperparameters
        (moved class paths upgraded) are parsed into the config, under what the command line gave."""
        hparams = upgrade_class_paths(dict(checkpoint.get("hyper_parameters", {})))
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        # A run's own config.yaml (rrn test --ckpt_path FILE alone, or given as --config) names the RunLogger that
        # rrn put there; its folder is the one this command resolved, not a new version.
        logger = config.trainer.logger
        saved_logger = (
            isinstance(logger, Namespace) and logger.get("class_path") == "rrn_lightning.runs.RunLogger"
        )
        if logger in (None, True) or saved_logger:
            config.trainer.logger = Namespace(
                class_path="rrn_lightning.runs.RunLogger", init_args=Namespace(**self._run_home)
            )
        callbacks = list(config.trainer.callbacks or [])
        if self.subcommand == "fit" and config.trainer.logger is not False:
            # The learning rate beside the loss curves (lr-Adam, ...), whatever the scheduler makes of it.
            if not _named_callbacks(callbacks, "LearningRateMonitor"):
                callbacks.append(Namespace(class_path=LR_MONITOR, init_args=Namespace()))
        # A progress bar that fits 80 columns, and where the run went at the end. The bar off drops ours where a
        # config names it (a --print_config output used as a config, say).
        if config.trainer.enable_progress_bar is False:
            callbacks = [c for c in callbacks if c not in _named_callbacks(callbacks, "RunProgressBar")]
        elif not _named_callbacks(callbacks, "ProgressBar"):
            callbacks.append(Namespace(class_path="rrn_lightning.runs.RunProgressBar", init_args=Namespace()))
        if (
            self.subcommand in ("fit", "validate", "test")
            and config.trainer.logger is not False
            and not _named_callbacks(callbacks, "RunSummary")
        ):
            callbacks.append(Namespace(class_path="rrn_lightning.runs.RunSummary", init_args=Namespace()))
        if self.subcommand == "predict":
            split = self._predict_split(config)
            if not _named_callbacks(callbacks, "PredictionWriter"):
                callbacks.append(
                    Namespace(
                        class_path="rrn_lightning.runs.PredictionWriter", init_args=Namespace(split=split)
                    )
                )
        config.trainer.callbacks = callbacks
        if self._print_config_flags is not None:
            self._print_config(config)

    def _predict_split(self, config: Namespace) -> str | None:
        """The split ``rrn predict`` reads: ``--predict_split`` put into the data module's ``predict_split``
        argument, else that argument as configured; None for a data module without one."""
        data = config.get("data")
        class_path = str(getattr(data, "class_path", ""))
        accepts = "predict_split" in _init_arguments(class_path)
        if config.get("predict_split") is not None:
            if not accepts:
                self.parser.exit(
                    2,
                    f"rrn: error: --predict_split={config.predict_split}: {class_path.rpartition('.')[2]} has no "
                    "predict_split (its predict_dataloader decides what is predicted); leave the option out.\n",
                )
            data.init_args.predict_split = config.predict_split
        return data.init_args.get("predict_split") if accepts else None

    def _print_config(self, config: Namespace) -> None:
        """``--print_config``, printed here rather than while parsing (jsonargparse's way) so that it shows what
        will run: the run folder resolved, a checkpoint's model, the logger and the callbacks added above."""
        kwargs = {"skip_unset": False}
        for flag in filter(None, self._print_config_flags.split(",")):
            if flag not in PRINT_CONFIG_FLAGS:
                self.parser.exit(
                    2,
                    f"rrn: error: --print_config={self._print_config_flags}: no flag {flag!r}; the flags are "
                    f"{', '.join(PRINT_CONFIG_FLAGS)}, separated by commas.\n",
                )
            kwargs[PRINT_CONFIG_FLAGS[flag]] = True
        parser = self.subcommand_parser(self.subcommand)
        # Parsed once more so that the classes added above show their arguments' defaults, as the config's own do.
        with_defaults = parser.parse_string(parser.dump(config, skip_unset=False))
        sys.stdout.write(parser.dump(with_defaults, **kwargs))
        self.parser.exit()

    def after_fit(self) -> None:
        trainer = self.trainer
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if timer is not None and trainer.is_global_zero and timer.time_remaining("train") <= 0:
            limit = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
            planned = f" of max_epochs={limit}" if limit is not None else ""
            print(
                f"rrn: training stopped on max_time after {timer.time_elapsed('train'):.0f} s of training "
                f"(counted across resumes) at epoch {trainer.current_epoch}{planned}, step {trainer.global_step}; "
                "continue with --ckpt_path last and a larger --trainer.max_time."
            )


def _named_callbacks(callbacks: list, suffix: str) -> list:
    """The config's callbacks whose class name ends with ``suffix`` (``ProgressBar``: any progress bar)."""
    return [c for c in callbacks if str(getattr(c, "class_path", "")).rpartition(".")[2].endswith(suffix)]


def _vocab_words(vocab) -> list[str]:
    """A data module's vocabulary -> its words in id order (what ``LanguageModel``'s ``vocab`` takes)."""
    return list(vocab.itos)


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
    in-process. Returns the ``LightningCLI`` object (its ``trainer``, ``model`` and ``datamodule``); ``generate``
    exits with ``rrn generate``'s status instead.

    The model is any ``TaskModule`` (our LightningModules' base class), which also makes
    ``rrn fit --model.init_args.core.help rrn_lightning.RelationalMemory`` work without a config: every task
    module takes a ``core``, so its help does not wait for the model's class_path."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["generate"]:
        raise SystemExit(generate.main(argv[1:]))
    if argv[:1] == ["compare"]:
        raise SystemExit(compare.main(argv[1:]))
    return RRNCLI(
        TaskModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        auto_configure_optimizers=False,
        trainer_defaults={"default_root_dir": "runs"},
        parser_kwargs={"description": DESCRIPTION, "default_env": False},
        parser_class=RRNArgumentParser,
        save_config_kwargs={"overwrite": True},
    )


def main() -> None:
    """The ``rrn`` console script (LightningCLI reads ``sys.argv`` itself)."""
    cli_main()


if __name__ == "__main__":
    main()
