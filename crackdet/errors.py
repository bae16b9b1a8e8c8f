"""Errors that name the file or setting at fault and the fix."""


class CrackdetError(Exception):
    """Base class: a problem the user can fix, reported without a traceback by the entry points."""


class DataError(CrackdetError):
    """The data folder or one of its files cannot be used as configured."""


class ConfigError(CrackdetError):
    """A configuration value is out of range or inconsistent."""


class WeightsError(CrackdetError):
    """Backbone weights cannot be found, downloaded or loaded."""
