"""The package's layout as users and data code see it: public imports, a data side that loads no model code, and
a CLI with one way to set each thing."""

import re
import subprocess
import sys

import pytest

import rrn_lightning
from rrn_lightning.cli import cli_main
from rrn_lightning.common import ConfigurationError, SupportsBatchLoss


def test_public_names_import_from_the_package():
    from rrn_lightning import LanguageModel, LSTMCore, RelationalMemory, Seq2Seq, SequenceClassifier
    from rrn_lightning.cores import ReferenceRelationalMemory
    from rrn_lightning.tasks import TaskModule

    for task in (LanguageModel, Seq2Seq, SequenceClassifier):
        assert issubclass(task, TaskModule)
    assert {"LSTMCore", "RelationalMemory", "LanguageModel", "Seq2Seq", "SequenceClassifier"} <= set(
        dir(rrn_lightning)
    )
    assert RelationalMemory.__module__ == "rrn_lightning.cores.rmc" and LSTMCore and ReferenceRelationalMemory
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        rrn_lightning.Nope  # noqa: B018


def test_importing_the_data_modules_loads_no_model_code():
    code = (
        "import sys, datamodules\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('rrn_lightning'))\n"
        "print(','.join(loaded))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "rrn_lightning,rrn_lightning.common"


def test_seq2seq_speaks_the_curriculum_protocol():
    from rrn_lightning import LSTMCore, Seq2Seq, SequenceClassifier

    seq2seq = Seq2Seq(core=LSTMCore(input_size=3, hidden_size=4), num_classes=5)
    classifier = SequenceClassifier(core=LSTMCore(input_size=3, hidden_size=4), num_classes=5)
    assert isinstance(seq2seq, SupportsBatchLoss) and not isinstance(classifier, SupportsBatchLoss)


@pytest.mark.parametrize("option", ["--optimizer=torch.optim.SGD", "--lr_scheduler.class_path=StepLR"])
def test_lightning_cli_optimizer_options_are_refused_with_where_they_go(option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config=experiments/nth_farthest/rmc_cpu.yaml", option])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    name = option[2:].split("=")[0].split(".")[0]
    assert f"--model.init_args.{name}" in message and "is not an option" in message


def test_help_lists_generate_compare_and_core_help_needs_no_config(capsys):
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    listed = re.findall(r"^    (\w+) ", capsys.readouterr().out, flags=re.M)
    assert listed[-6:] == ["fit", "validate", "test", "predict", "generate", "compare"]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--model.init_args.core.help", "rrn_lightning.RelationalMemory"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--core.mem_slots" in out and "--core.compile" in out


def test_help_is_whole_sentences_and_says_what_last_means(capsys):
    from rrn_lightning.cli import CKPT_PATH_HELP, SUBCOMMAND_HELP

    with pytest.raises(SystemExit):
        cli_main(["--help"])
    listing = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    for text in SUBCOMMAND_HELP.values():
        assert text in listing and text.endswith(".")
    for subcommand in SUBCOMMAND_HELP:
        with pytest.raises(SystemExit):
            cli_main([subcommand, "--help"])
        page = " ".join(capsys.readouterr().out.split())
        assert SUBCOMMAND_HELP[subcommand] in page and " ".join(CKPT_PATH_HELP.split()) in page


def test_configuration_error_is_the_one_class_everywhere():
    from datamodules import nth_farthest
    from rrn_lightning.cores import rmc

    assert nth_farthest.ConfigurationError is ConfigurationError is rmc.ConfigurationError


def test_the_rmc_step_description_and_the_code_cite_the_same_steps():
    """docs/rmc_step.md numbers the RMC step; reference.py carries out every numbered step under its number, and
    rmc.py cites only numbers that exist there (a renumbered or removed step shows here)."""
    from pathlib import Path

    root = Path(__file__).parents[1]
    doc = (root / "docs" / "rmc_step.md").read_text()
    numbered = [int(n) for n in re.findall(r"^(\d+)\. \*\*", doc, re.MULTILINE)]
    assert numbered == list(range(1, len(numbered) + 1)) and len(numbered) == 6
    reference = (root / "rrn_lightning" / "cores" / "reference.py").read_text()
    assert [int(n) for n in re.findall(r"^\s+# (\d+)\. ", reference, re.MULTILINE)] == numbered
    fast = (root / "rrn_lightning" / "cores" / "rmc.py").read_text()
    cited = re.findall(r"docs/rmc_step\.md, steps? (\d+)(?:-(\d+))?", fast)
    assert cited and all(1 <= int(n) <= len(numbered) for pair in cited for n in pair if n)
    assert "DESIGN.md" not in fast + reference  # the step is described in the repository, not beside it


def test_private_names_of_lightning_live_in_one_module():
    """Lightning's (and argparse's, SummaryWriter's) private names are used in rrn_lightning/lightning_private.py
    only, which says for each why and on which versions; elsewhere a rename in Lightning cannot break us unseen."""
    from pathlib import Path

    package = Path(__file__).parents[1] / "rrn_lightning"
    private = re.compile(
        r"\._(?:add_subcommands|run_subcommand|parse_ckpt_path|parser\(|subcommand_parsers|subcommands_action|"
        r"choices_actions|name_parser_map|actions\b|save_checkpoint|last_global_step_saved|last_checkpoint_saved|"
        r"batches_that_stepped|should_accumulate|sanitize_params|get_file_writer)"
        r"|import _\w+|cloud_io|_convert_params|_flatten_dict"
    )
    found = {
        f"{path.relative_to(package)}:{number}: {line.strip()}"
        for path in package.rglob("*.py")
        if path.name != "lightning_private.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if private.search(line.split("#")[0]) and not line.strip().startswith(('"', "'"))
    }
    assert not found, sorted(found)
