"""Print pip constraints that pin each runtime dependency of pyproject.toml at its declared lower bound
(``name>=X`` -> ``name==X``), plus the pins under ``[tool.rrn-lightning] lowest-extra``, for .ci/run's
lowest-versions job (Python 3.11 or later, for tomllib). A dependency without a lower bound is an error: every
bound is meant to be tested."""

import re
import sys
from pathlib import Path

import tomllib

project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
pins = []
for requirement in project["project"]["dependencies"]:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)(,.*)?", requirement.strip())
    if match is None:
        sys.exit(f".ci/lowest.py: {requirement!r} in pyproject.toml has no lower bound (name>=X) to test.")
    pins.append(f"{match.group(1)}=={match.group(3)}")
pins += project.get("tool", {}).get("rrn-lightning", {}).get("lowest-extra", [])
print("\n".join(pins))
