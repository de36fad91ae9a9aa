"""Your own labelled text: ``TextClassificationDataModule`` through Hugging Face ``datasets``, and the CLI."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("datasets")

from test_own_data import samples_text  # noqa: E402

from datamodules import TextClassificationDataModule  # noqa: E402
from rrn_lightning.cli import cli_main  # noqa: E402
from rrn_lightning.common import ConfigurationError  # noqa: E402

EXPERIMENTS = Path(__file__).parents[1] / "experiments" / "own_data"
ROWS = [
    ("a great film", "pos"),
    ("a dull film", "neg"),
    ("Great acting and a great plot", "pos"),
    ("dull dull dull", "neg"),
    ("the plot was great", "pos"),
    ("the acting was dull", "neg"),
] * 5


def write_csv(path: Path, rows=ROWS, header=("text", "label")) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows=ROWS) -> Path:
    path.write_text(
        "".join(json.dumps({"review": t, "stars": 5 if lab == "pos" else 1}) + "\n" for t, lab in rows)
    )
    return path


def test_csv_words_vocabulary_and_splits(tmp_path):
    data = TextClassificationDataModule(str(write_csv(tmp_path / "r.csv")), batch_size=4)
    assert data.class_names == ["neg", "pos"] and data.num_classes == 2
    assert data.split_sizes() == {"val": 3, "test": 3, "train": 24}
    words = set(data.token_vocab.itos)
    assert {"<unk>", "<eos>", "great", "dull"} <= words and "Great" not in words  # lower-cased
    batch = next(iter(data.train_dataloader()))
    assert batch.inputs.dtype == torch.long and batch.inputs.shape[1] == int(batch.lengths.max())
    described = data.describe_example(batch, 0, batch.labels[0])
    assert described.lines[0].startswith("text: ") and described.lines[1].endswith(
        f"model {described.lines[1][6:9]}"
    )


def test_vocabulary_options_and_an_unseen_word(tmp_path):
    train = write_csv(tmp_path / "r.csv")
    test = write_csv(tmp_path / "t.csv", [("a brand new word", "pos")] * 3)
    data = TextClassificationDataModule(str(train), test_path=str(test), min_freq=12)
    assert (
        "great" in data.token_vocab.itos and "plot" not in data.token_vocab.itos
    )  # plot: 10 in all, 8 in train
    unk = data.token_vocab.itos.index("<unk>")
    batch = next(iter(data.test_dataloader()))
    assert (batch.inputs[0, 1:4] == unk).all()  # brand, new, word
    small = TextClassificationDataModule(str(train), max_size=3)
    assert len(small.token_vocab) == 3  # <unk>, <eos> and the most frequent word
    chars = TextClassificationDataModule(str(train), tokens="char", max_length=5)
    assert max(int(b.lengths.max()) for b in chars.train_dataloader()) == 5


def test_json_lines_with_named_columns_and_integer_labels(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl")
    data = TextClassificationDataModule(str(path), text_column="review", label_column="stars")
    assert data.class_names == [str(i) for i in range(6)]  # ids 0..5: the stars as class ids
    with pytest.raises(
        ConfigurationError, match=r"has no column 'text' \(it has: review, stars\); .*text_column"
    ):
        TextClassificationDataModule(str(path))


def test_bad_input_in_one_line(tmp_path, monkeypatch):
    train = write_csv(tmp_path / "r.csv")
    other = write_csv(tmp_path / "v.csv", [("so so", "meh")] * 2)
    with pytest.raises(
        ConfigurationError,
        match="the val split's 'label' column: label 'meh' is not a class of the training split",
    ):
        TextClassificationDataModule(str(train), val_path=str(other))
    with pytest.raises(
        ConfigurationError, match=r"must be a \.csv, \.tsv, \.json, \.jsonl or \.parquet file"
    ):
        TextClassificationDataModule(str(train), test_path=str(tmp_path / "t.txt"))
    with pytest.raises(ConfigurationError, match="path is required"):
        TextClassificationDataModule()
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed
    with pytest.raises(
        ConfigurationError, match=r'datasets, which is not installed: pip install -e "\.\[text\]"'
    ):
        TextClassificationDataModule(str(train))


@pytest.mark.parametrize("core", ["rmc", "lstm"])
def test_fit_then_predict_from_the_checkpoint_alone(core, tmp_path, capsys):
    common = [
        f"--config={EXPERIMENTS / f'text_{core}.yaml'}",
        f"--data.init_args.path={write_csv(tmp_path / 'r.csv')}",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
        "--trainer.max_epochs=2",
        "--trainer.enable_progress_bar=false",
    ]
    cli = cli_main(["fit", *common])
    assert cli.model.embedding.num_embeddings == cli.datamodule.vocab_size
    assert cli.model.class_names == ["neg", "pos"]
    run = Path(cli.trainer.log_dir)
    # TensorBoard's samples show each validation example's words, its label and the model's, by name.
    text = samples_text(run)
    assert text.count("text: ") == 3 and re.search(r"text: [a-z]+ [a-z]+", text)
    assert re.search(r"class (neg|pos), model (neg|pos)", text)
    ckpt = run / "checkpoints" / "last.ckpt"
    cli_main(["predict", f"--ckpt_path={ckpt}", "--trainer.enable_progress_bar=false"])
    assert "(the test split, 3 examples" in capsys.readouterr().out
    predictions = torch.load(run / "predictions_test.pt", weights_only=True)
    assert predictions["class_names"] == ["neg", "pos"] and predictions["prediction"].shape == (3,)
