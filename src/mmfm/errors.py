"""The one base class of errors that are the user's to fix.

Raise :class:`UserError` (or a ``ValueError``, which it is) for bad input: a flag, a config value, a file.
Its message is one line that names the problem and the fix; the ``mmfm`` command prints exactly that
line and exits with code 2, where an unexpected exception (a bug) is reported with its type and a
pointer to ``--debug``.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input: the message says what is wrong and what to do instead."""
