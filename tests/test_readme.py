"""The README's Python example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_core_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = next(b for b in blocks if "RelationalMemory(" in b)
    namespace: dict = {}
    exec(example, namespace)  # noqa: S102 - our own README
    assert namespace["outs"].shape == (8, 10, 256)
    assert namespace["attention"].shape == (8, 10, 1, 2, 4, 5)
