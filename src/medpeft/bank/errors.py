"""Errors of the adapter bank: each names the task or modality at fault."""

from __future__ import annotations

from medpeft.errors import DataError, MedpeftError


class UnknownTask(MedpeftError, LookupError):
    """A task name the bank does not hold."""


class BadInput(DataError):
    """An input file that cannot be decoded as an image (the message names the modality)."""


class WrongModality(DataError):
    """An input for a modality the task does not read."""
