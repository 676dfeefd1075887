"""One error type for bad user input; the console scripts print it as a single line (no traceback)."""
import sys


class ImitKDError(ValueError):
    """A user-facing configuration or data error; the message names the file, row or flag."""


def install_excepthook():
    """Print ImitKDError as one ``error: ...`` line (exit status 2) also under plain ``fairseq-train``."""
    previous = sys.excepthook
    if getattr(previous, "_imitkd", False):
        return

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, ImitKDError):
            sys.stderr.write(f"error: {exc}\n")
            sys.stderr.flush()
            raise SystemExit(2)
        previous(exc_type, exc, tb)

    hook._imitkd = True
    sys.excepthook = hook
