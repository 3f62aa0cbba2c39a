"""User-facing errors.

Anything raised as `EdgefaceError` is the user's mistake (bad path, bad flag, wrong weights) and the CLI
prints it as one line with a non-zero exit; every other exception is our bug and keeps its traceback.
"""


class EdgefaceError(Exception):
    """A problem the user can fix; its message is shown as-is, on one line."""

    exit_code = 2


class ParityError(EdgefaceError):
    """An exported artifact disagrees with the PyTorch model it came from."""

    exit_code = 3
