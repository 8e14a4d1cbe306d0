"""Errors medpeft raises for bad user input: each names the culprit and what was expected."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MedpeftError(Exception):
    """Base class for errors caused by user input (config, data, weights)."""


class ConfigError(MedpeftError, ValueError):
    """A config file or override is invalid."""


class DataError(MedpeftError, ValueError):
    """A dataset, manifest or image file is missing or malformed."""


class WeightsError(MedpeftError, RuntimeError):
    """Backbone or adapter weights cannot be found, loaded or matched."""


class TrainingError(MedpeftError, RuntimeError):
    """Training cannot go on (e.g. the loss diverged to NaN or infinity)."""


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the option closest to ``name``, or ``""``."""
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
