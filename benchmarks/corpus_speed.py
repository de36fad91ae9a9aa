"""How fast a word-level corpus is counted, encoded, cached and loaded again.

    python benchmarks/corpus_speed.py                      # 100M tokens, WikiText-103's size
    python benchmarks/corpus_speed.py --tokens 100000      # smoke test

Writes a synthetic corpus of ``--tokens`` tokens (Zipf-distributed words from a vocabulary of WikiText-103's size,
267,735 words, 20 tokens per line) into a temporary folder, then times, through the library's own functions:
building the vocabulary of train (counting its words, writing the vocabulary cache) and loading that cache again,
encoding train into the token cache, and loading the cached split again (memory-mapped, with its checks: the first
load and the median of ``--reps``). Then the parts of that load, each the median of ``--reps`` runs: the memory
mapping alone, the sampled checksum, the range check of the ids on a fresh mapping (its first touch of every page)
and on one already touched, and, for comparison, a full sha256 of the cache file. Prints one line per figure and a last line with one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from datamodules.corpus import load_stream, load_vocab, sampled_digest  # noqa: E402


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


def run_times(fn, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_time(fn, reps: int) -> float:
    return statistics.median(run_times(fn, reps))


def full_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(16 << 20):
            digest.update(block)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=100_000_000, help="words in the corpus (before <eos>)")
    parser.add_argument("--vocab", type=int, default=267_735, help="distinct words to draw from")
    parser.add_argument("--reps", type=int, default=5, help="runs per timing of a load or a check (median)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        train, cache = folder / "train.txt", folder / "cache"
        write_corpus(train, args.tokens, args.vocab)
        size_mb = train.stat().st_size / 2**20
        start = time.perf_counter()
        vocab = load_vocab(train, cache)  # counts the words, writes the vocabulary cache and its sha256
        vocab_s = time.perf_counter() - start
        vocab_load_s = median_time(lambda: load_vocab(train, cache), args.reps)
        start = time.perf_counter()
        ids = load_stream(train, vocab, cache)  # encodes and writes the cache
        encode_s = time.perf_counter() - start
        total = len(ids)
        del ids
        load_times = run_times(lambda: load_stream(train, vocab, cache), args.reps)
        (data,) = cache.glob("train-*.int32")

        def mapped() -> torch.Tensor:
            return torch.from_file(str(data), shared=False, size=total, dtype=torch.int32)

        touched = mapped()
        torch.aminmax(touched)
        result = {
            "tokens": total,
            "file_mb": round(size_mb, 1),
            "cache_mb": round(data.stat().st_size / 2**20, 1),
            "vocab": len(vocab),
            "vocab_build_s": round(vocab_s, 3),
            "count_tokens_per_s": round(total / vocab_s),
            "cached_vocab_load_s": round(vocab_load_s, 4),
            "encode_and_cache_s": round(encode_s, 3),
            "encode_tokens_per_s": round(total / encode_s),
            "cached_load_first_s": round(load_times[0], 4),
            "cached_load_s": round(statistics.median(load_times), 4),
            "mmap_only_s": round(median_time(mapped, args.reps), 5),
            "sampled_check_s": round(median_time(lambda: sampled_digest(data), args.reps), 5),
            "range_check_first_touch_s": round(median_time(lambda: torch.aminmax(mapped()), args.reps), 5),
            "range_check_touched_s": round(median_time(lambda: torch.aminmax(touched), args.reps), 5),
            "full_sha256_s": round(median_time(lambda: full_sha256(data), min(args.reps, 3)), 3),
            "checksum": int(touched[:: max(1, total // 1000)].sum()),
        }
    for key, value in result.items():
        print(f"{key}: {value}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
