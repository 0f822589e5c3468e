"""The command layer's user error: a ``data.errors.InputError`` raised by the commands themselves.

The CLI (``reproduce.__main__``) catches ``InputError``, the one base class of every user-facing
error of the library and of this package, and prints it as one line with exit status 2.
"""
from data.errors import InputError


class UserError(InputError):
    """Bad input from the user (a file, a field, a value): printed as one line, exit status 2."""
