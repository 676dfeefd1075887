"""One error type for bad user input; the console scripts print it as a single line (no traceback)."""
import sys


class ImitKDError(ValueError):
    """A user-facing configuration or data error; the message names the file, row or flag."""


def message(e: BaseException) -> str:
    """The one line of ``e``. torch re-raises an error of a data-loader worker (``--num-workers``) in the main
    process as a new one of the same type whose message is "Caught ImitKDError in DataLoader worker process 0.",
    then the worker's whole traceback; its last line holds the original message."""
    text = str(e)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        last = text.rstrip().rsplit("\n", 1)[-1]
        name = f"{type(e).__module__}.{type(e).__qualname__}: "
        return last[len(name):] if last.startswith(name) else last
    return text


def path_error(e: OSError) -> ImitKDError:
    """An OSError that names its file (a path one cannot read or create) as ``PATH: reason``; one that names no
    file is not about a user's path and is raised again unchanged."""
    if e.filename is None:
        raise e
    return ImitKDError(f"{e.filename}: {e.strerror or e}")


def install_excepthook():
    """Print ImitKDError as one ``error: ...`` line (exit status 2) also under plain ``fairseq-train``."""
    previous = sys.excepthook
    if getattr(previous, "_imitkd", False):
        return

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, ImitKDError):
            sys.stderr.write(f"error: {message(exc)}\n")
            sys.stderr.flush()
            raise SystemExit(2)
        previous(exc_type, exc, tb)

    hook._imitkd = True
    sys.excepthook = hook
