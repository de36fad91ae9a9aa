"""How fast a word-level corpus is counted, encoded, cached and loaded again.

    python benchmarks/corpus_speed.py                      # 100M tokens, WikiText-103's size
    python benchmarks/corpus_speed.py --tokens 100000      # smoke test

Writes a synthetic corpus of ``--tokens`` tokens (Zipf-distributed words from a vocabulary of WikiText-103's size,
267,735 words, 20 tokens per line) into a temporary folder, then times, through the library's own functions:
counting the words of train (the vocabulary build), encoding train into the cache, and loading the cached split
again (memory-mapped). Prints one line per figure and a last line with one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from datamodules.corpus import Vocab, count_words, load_stream  # noqa: E402


def write_corpus(path: Path, tokens: int, vocab_size: int, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    words = [f"w{i}" for i in range(vocab_size)]
    # Zipf's law: rank r has probability proportional to 1 / r.
    weights = 1.0 / torch.arange(1, vocab_size + 1, dtype=torch.float64)
    per_line, chunk = 20, 1_000_000
    with open(path, "w", encoding="utf-8") as f:
        left = tokens
        while left > 0:
            n = min(chunk, left)
            ids = torch.multinomial(weights, n, replacement=True, generator=generator).tolist()
            lines = (" ".join(words[i] for i in ids[s : s + per_line]) for s in range(0, n, per_line))
            f.write("\n".join(lines) + "\n")
            left -= n


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=100_000_000, help="words in the corpus (before <eos>)")
    parser.add_argument("--vocab", type=int, default=267_735, help="distinct words to draw from")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        train, cache = folder / "train.txt", folder / "cache"
        write_corpus(train, args.tokens, args.vocab)
        size_mb = train.stat().st_size / 2**20
        start = time.perf_counter()
        counts = count_words(train)
        count_s = time.perf_counter() - start
        vocab = Vocab.build(counts)
        total = sum(counts.values())
        start = time.perf_counter()
        ids = load_stream(train, vocab, cache)  # encodes and writes the cache
        encode_s = time.perf_counter() - start
        del ids
        start = time.perf_counter()
        again = load_stream(train, vocab, cache)
        load_s = time.perf_counter() - start
        checksum = int(again[:: max(1, len(again) // 1000)].sum())  # touch the mapping
        result = {
            "tokens": total,
            "file_mb": round(size_mb, 1),
            "vocab": len(vocab),
            "count_s": round(count_s, 3),
            "count_tokens_per_s": round(total / count_s),
            "encode_and_cache_s": round(encode_s, 3),
            "encode_tokens_per_s": round(total / encode_s),
            "cached_load_s": round(load_s, 4),
            "checksum": checksum,
        }
    for key, value in result.items():
        print(f"{key}: {value}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
