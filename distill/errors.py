"""Errors a user can fix: the ``ablate`` CLI prints their message as one line and exits 2.

Every package's user-facing error derives from :class:`UserError`, so the CLI needs this
one light module (no torch) to tell a bad input from a bug. Messages name the file or
option and the fix.
"""


class UserError(Exception):
    """A bad input or a missing file; the message names it and says what to do."""


class ConfigError(UserError, ValueError):
    """A bad config value; the message names the source (file) and the key."""


class TeacherError(UserError):
    """A teacher directory that is missing, incomplete or corrupt (message names the file)."""


class CheckpointError(UserError):
    """A checkpoint that is unreadable or belongs to a different run (message names it)."""


class OutputFolderError(UserError):
    """The output folder ($ABLATE_HOME) cannot be created or written."""
