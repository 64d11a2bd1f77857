"""The evaluation package's user errors (see :mod:`distill.errors`)."""

from distill.errors import UserError


class EvalError(UserError):
    """Bad evaluation input or a missing metric file (the message names it and the fix)."""


class MetricModelError(UserError):
    """A metric model directory that is missing, incomplete or corrupt (message names the file)."""
