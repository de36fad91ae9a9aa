"""The program families of Zaremba & Sutskever (2014), "Learning to Execute", as valid Python.

Every sample is a small Python program ending in one ``print(...)``; its target is exactly what that print writes
(values are exact: no modulus). ``length`` is the number of digits of the literals, ``nesting`` how many operations
are composed. A worked example, ``program`` task, length 2, nesting 2::

    d=41
    for x in range(5):d+=73
    print((d-17))

prints ``389`` (41 + 5 * 73 - 17). Memorisation tasks are not programs: ``copy``, ``reverse`` and ``double`` read
an L-digit number and write it back as it is, reversed, or twice.

Operations (each application nests one level; the other operands are literals):

- ``+`` / ``-``: ``(e+n)``, ``(n-e)``, ... (``addition``: exactly two L-digit literals, ``print((a+b))``);
- ``*`` with one small operand, up to 4L as in the original: ``(e*k)``;
- if-else expressions: ``(e if n<m else n)``, comparison ``<`` or ``>``;
- for loops: ``v=e`` then ``for x in range(k):v+=n``, k up to 4L, and ``v`` in the expression;
- assignments: ``v=e`` then ``v`` in the expression.

``control`` uses if-else, for loops and assignments (with ``+`` to combine); ``program`` uses everything.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["MEMORY_TASKS", "PROGRAM_TASKS", "TASKS", "Sample", "generate"]

PROGRAM_TASKS = ("addition", "control", "program")
MEMORY_TASKS = ("copy", "reverse", "double")
TASKS = PROGRAM_TASKS + MEMORY_TASKS
_VARIABLES = "abcdefghijklmnopqrstuvwyz"  # x is the loop variable


@dataclass(frozen=True)
class Sample:
    source: str  # the program text (or the number, for memorisation tasks)
    target: str  # what the program prints, without the newline


class _Builder:
    """Builds one program: statements before the print, and a fresh variable name when one is needed."""

    def __init__(self, rng: random.Random, length: int) -> None:
        self.rng, self.length = rng, length
        self.lines: list[str] = []
        self.names = list(_VARIABLES)
        rng.shuffle(self.names)

    def literal(self) -> tuple[str, int]:
        value = self.rng.randint(10 ** (self.length - 1) if self.length > 1 else 0, 10**self.length - 1)
        return str(value), value

    def small(self) -> int:
        return self.rng.randint(1, 4 * self.length)

    def expression(self, nesting: int, ops: tuple[str, ...]) -> tuple[str, int]:
        """An expression with ``nesting - 1`` operations composed around a literal."""
        if nesting <= 1:
            return self.literal()
        code, value = self.expression(nesting - 1, ops)
        op = self.rng.choice(ops)
        if op == "+":
            other, v = self.literal()
            return (
                (f"({code}+{other})", value + v)
                if self.rng.random() < 0.5
                else (f"({other}+{code})", v + value)
            )
        if op == "-":
            other, v = self.literal()
            return (
                (f"({code}-{other})", value - v)
                if self.rng.random() < 0.5
                else (f"({other}-{code})", v - value)
            )
        if op == "*":
            k = self.small()
            return (f"({code}*{k})", value * k) if self.rng.random() < 0.5 else (f"({k}*{code})", k * value)
        if op == "if":
            (a, va), (b, vb), (c, vc) = self.literal(), self.literal(), self.literal()
            if self.rng.random() < 0.5:
                return f"({code} if {a}<{b} else {c})", value if va < vb else vc
            return f"({c} if {a}>{b} else {code})", vc if va > vb else value
        if op == "for":
            name, k = self.names.pop(), self.small()
            other, v = self.literal()
            self.lines += [f"{name}={code}", f"for x in range({k}):{name}+={other}"]
            return name, value + k * v
        if op == "assign":
            name = self.names.pop()
            self.lines.append(f"{name}={code}")
            return name, value
        raise ValueError(f"unknown operation {op!r}")


def generate(task: str, length: int, nesting: int, rng: random.Random) -> Sample:
    """One sample of ``task`` with literals of ``length`` digits and ``nesting`` levels of operations."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got task={task!r}.")
    builder = _Builder(rng, length)
    if task in MEMORY_TASKS:
        code, _ = builder.literal()
        target = {"copy": code, "reverse": code[::-1], "double": code + code}[task]
        return Sample(code, target)
    if task == "addition":
        (a, va), (b, vb) = builder.literal(), builder.literal()
        return Sample(f"print(({a}+{b}))", str(va + vb))
    ops = ("if", "for", "assign", "+") if task == "control" else ("+", "-", "*", "if", "for", "assign")
    # Nesting counts the operations: at nesting 1 a single operation applied to literals.
    code, value = builder.expression(nesting + 1, ops)
    return Sample("\n".join([*builder.lines, f"print({code})"]), str(value))
