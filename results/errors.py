"""The results package's user error (see :mod:`distill.errors`); light, so the CLI can
raise it without importing pandas and MLflow."""

from distill.errors import UserError


class ResultsError(UserError):
    """Nothing (usable) to report: no store, no parent run, no finished runs, mixed keys."""
