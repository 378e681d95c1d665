"""Exceptions for bad input and missing resources.

Every error a user can cause by what they pass in (a missing file, a malformed zoo, a bad
config value, a directory another process is writing) is a :class:`SaneError`. Its message
names the file or key at fault and what was expected; the ``sane`` command prints it without a
traceback and exits with status 2.
"""


class SaneError(Exception):
    """Base class: an error caused by the input, explained by its message."""


class DatasetNotFoundError(SaneError, FileNotFoundError):
    """A dataset's files are not where they were looked for."""


class FormatError(SaneError, ValueError):
    """A file or object does not follow the format it claims (wrong shape, dtype, key, value)."""


class ConfigError(SaneError, ValueError):
    """A configuration value is missing, unknown or out of range."""


class BusyError(SaneError):
    """A directory is being written by another process."""
