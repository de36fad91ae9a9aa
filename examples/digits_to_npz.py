"""scikit-learn's handwritten digits (1,797 images of 8 x 8, shipped inside the package) as sequences for
``SequenceDataModule``: each image read row by row, 8 steps of 8 features, its digit as the label.

    pip install -e ".[examples]"          # scikit-learn
    python examples/digits_to_npz.py data/digits.npz
    rrn fit --config experiments/own_data/sequences_rmc.yaml --data.init_args.path=data/digits.npz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the .npz file to write, e.g. data/digits.npz")
    args = parser.parse_args(argv)
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        print('digits_to_npz.py: scikit-learn is missing; pip install -e ".[examples]"', file=sys.stderr)
        return 2
    digits = load_digits()
    inputs = (digits.images / 16.0).astype(np.float32)  # [1797, 8, 8]: rows as steps, pixels in 0..1
    labels = digits.target.astype(np.int64)  # [1797], 0..9
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, inputs=inputs, labels=labels)
    print(f"wrote {out}: inputs {list(inputs.shape)}, labels {list(labels.shape)} (10 classes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
