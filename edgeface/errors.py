"""User-facing errors, and the exit codes that tell them apart.

- `EdgefaceError` (exit 2): the user's mistake (bad path, bad flag, wrong weights). Nothing was written.
- `ModelError` (exit 1): our failure on the user's model (an op we cannot quantize, a graph we cannot
  export). Its message names the layer or op and what to try, e.g. `--keep-float LAYER`.
- `ParityError` (exit 3): an exported artifact disagrees with the PyTorch model it came from.
- Any other exception is an internal failure; the CLI reports it as one line with exit 1 and shows the
  traceback only with `--debug`.
"""


class EdgefaceError(Exception):
    """A problem the user can fix; its message is shown as-is, on one line."""

    exit_code = 2


class ModelError(EdgefaceError):
    """edgeface could not handle part of the user's model; the message names the layer/op and a way out."""

    exit_code = 1


class ParityError(EdgefaceError):
    """An exported artifact disagrees with the PyTorch model it came from."""

    exit_code = 3
