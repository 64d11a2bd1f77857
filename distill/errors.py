"""Error types users see as one line and exit code 2; kept free of heavy imports so the
CLI can name them without loading torch."""


class TeacherError(RuntimeError):
    """A teacher directory that is missing, incomplete or corrupt (message names the file)."""
