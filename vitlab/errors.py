"""Errors that the entry points turn into one line for the user.

Anything raised as a :class:`VitlabError` means "the input was wrong, here is what to do"; the
command-line entry points print its message on one line and exit with status 2, with no traceback.
Everything else is a bug and keeps its traceback.
"""


class VitlabError(Exception):
    """Bad input: the message names the key or path and says what to do."""


class ConfigError(VitlabError):
    """A configuration value is missing, of the wrong kind, or inconsistent with another."""


class DataError(VitlabError):
    """A dataset folder or file is missing, empty, or not in the expected layout."""
