"""Errors medpeft raises for bad user input: each names the culprit and what was expected."""


class MedpeftError(Exception):
    """Base class for errors caused by user input (config, data, weights)."""


class ConfigError(MedpeftError, ValueError):
    """A config file or override is invalid."""


class DataError(MedpeftError, ValueError):
    """A dataset, manifest or image file is missing or malformed."""


class WeightsError(MedpeftError, RuntimeError):
    """Backbone or adapter weights cannot be found, loaded or matched."""
