"""Errors that the entry points turn into one line for the user, and the hint a mistyped key gets.

Anything raised as a :class:`VitlabError` means "the input was wrong, here is what to do"; the
command-line entry points print its message on one line and exit with status 2, with no traceback.
Everything else is a bug and keeps its traceback.
"""


import difflib
from collections.abc import Iterable


class VitlabError(Exception):
    """Bad input: the message names the key or path and says what to do."""


class ConfigError(VitlabError):
    """A configuration value is missing, of the wrong kind, or inconsistent with another."""


class DataError(VitlabError):
    """A dataset folder or file is missing, empty, or not in the expected layout."""


class StorageError(VitlabError):
    """A file could not be written (a full disk, a quota, a folder taken away); what was written
    before is intact."""


def nearest_key_hint(key: str, known: Iterable[str]) -> str:
    """What to say of a key that is not one of ``known``: the nearest name, or the whole list."""
    known = list(known)
    close = difflib.get_close_matches(key, known, n=1)
    return f"did you mean {close[0]}?" if close else f"the keys are: {', '.join(known) or 'none'}"

