"""``rrn generate``: sample text from a trained language model's checkpoint.

    rrn generate --checkpoint runs/language_modelling_ptb_lstm_small/version_0/checkpoints/last.ckpt \\
        --prompt "the company said" --length 40 --temperature 0.8 --top_k 50 --seed 0

The checkpoint holds the vocabulary, so nothing else is needed. Words of the prompt that the vocabulary lacks are
read as ``<unk>``; ``<eos>`` in the output is printed as a line break.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .checkpoints import check_checkpoint
from .common import EOS_TOKEN, UNK_ID, ConfigurationError

DESCRIPTION = "Sample text from a language model checkpoint."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rrn generate", description=DESCRIPTION)
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``rrn generate``; also shown by ``rrn --help``'s ``generate`` entry (``rrn_lightning.cli``)."""
    parser.add_argument(
        "--checkpoint", required=True, help="a LanguageModel checkpoint (.ckpt) written by rrn fit"
    )
    parser.add_argument("--prompt", default="", help="words to start from (default: a sentence start)")
    parser.add_argument("--length", type=int, default=50, help="words to sample (default 50)")
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="divides the log-probabilities (default 1)"
    )
    parser.add_argument("--top_k", type=int, default=None, help="sample among the k most likely words only")
    parser.add_argument("--seed", type=int, default=None, help="seed of the sampler, for repeatable output")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")


def generate_text(
    checkpoint: str | Path,
    prompt: str = "",
    length: int = 50,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    device: str = "cpu",
) -> str:
    """The prompt followed by ``length`` sampled words, ``<eos>`` shown as a line break."""
    from .tasks import LanguageModel

    if length < 1:
        raise ConfigurationError(f"--length must be positive, got {length}.")
    # Checked here to name the option in errors; load_from_checkpoint checks again, cheaply (memory-mapped).
    check_checkpoint(checkpoint, LanguageModel, what="--checkpoint")
    model = LanguageModel.load_from_checkpoint(checkpoint, map_location=device)
    if model.vocab_words is None:
        raise ConfigurationError(
            f"--checkpoint {checkpoint} holds no vocabulary: its LanguageModel was trained without one. `rrn fit` "
            "passes the data's; in Python, pass vocab=datamodule.vocab.itos to LanguageModel."
        )
    lookup = {w: i for i, w in enumerate(model.vocab_words)}
    words = prompt.split()
    ids = [lookup.get(w, UNK_ID) for w in words]
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    sampled = model.generate(ids, length, temperature=temperature, top_k=top_k, generator=generator)
    text = " ".join([*words, *(model.vocab_words[i] for i in sampled)])
    return text.replace(f" {EOS_TOKEN} ", "\n").replace(EOS_TOKEN, "\n").strip()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        print(
            generate_text(
                args.checkpoint,
                args.prompt,
                args.length,
                args.temperature,
                args.top_k,
                args.seed,
                args.device,
            )
        )
    except ConfigurationError as error:
        print(f"rrn generate: error: {error}", file=sys.stderr)
        return 2
    return 0
