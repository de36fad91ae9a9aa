"""Argument checks shared by the cores, modules and data modules: errors that name the argument and its value."""

from __future__ import annotations


class ConfigurationError(ValueError):
    """A bad argument value. The ``rrn`` CLI prints its message alone, without a traceback."""


def check_positive_ints(owner: str, **values: object) -> None:
    """Raise a ValueError naming ``owner``'s argument and its value unless every value is an int >= 1."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"{owner}: {name} must be a positive integer, got {name}={value!r}.")
