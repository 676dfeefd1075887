"""Write a file all at once or not at all: readers see the old file or the new one, never a half-written one.

The data goes to a hidden temporary file beside the destination, ``.<name>.<host>-<pid>.<random>.tmp``
(same directory, so the final ``os.replace`` is atomic), which is removed on any error or interrupt.
Used for every output of the data-prep scripts, the demo and the dataset script.
"""
import contextlib
import os
import re
import secrets
import socket
from typing import Callable, Optional


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def sweep_stale(path, log: Optional[Callable[[str], None]] = None) -> None:
    """Remove the temporary files of ``path`` that a process on this host left behind when it was killed
    (SIGKILL: no chance to clean up); those of running processes are left alone. ``log`` hears of each
    as ``warning: removed <file>, left by process <pid> (killed?)``."""
    directory, name = os.path.split(os.path.abspath(path))
    stale = re.compile(rf"\.{re.escape(name)}\.{re.escape(_host())}-(\d+)\.[^.]+\.tmp")
    for entry in os.listdir(directory):
        m = stale.fullmatch(entry)
        if m and not _process_alive(int(m.group(1))):
            try:
                os.unlink(os.path.join(directory, entry))
            except OSError:
                continue
            if log is not None:
                log(f"warning: removed {os.path.join(directory, entry)}, left by process {m.group(1)} (killed?)")


def _create_temp(path):
    """(fd, name) of a new temporary file beside ``path``, created with mode 0o666 minus the umask."""
    directory, name = os.path.split(os.path.abspath(path))
    prefix = os.path.join(directory, f".{name}.{_host()}-{os.getpid()}.")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = f"{prefix}{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_write(path, binary: bool = False, *, fsync: bool = True, sweep: bool = True, mode_from=None,
                 log: Optional[Callable[[str], None]] = None):
    """``with atomic_write(path) as f: f.write(...)``: ``path`` gets everything written to ``f``, or stays as it was.

    ``f`` is a text file (UTF-8, no newline translation) or, with ``binary``, a binary one. When the block
    ends without an exception, ``f`` is flushed, fsync'd (``fsync``; off for scratch files written by the
    thousand), given the permissions of the file it replaces (else those of ``mode_from``, else 0o666 minus
    the umask, as ``open`` gives) and renamed to ``path``. On any exception (KeyboardInterrupt included) the
    temporary file is removed and the exception propagates. ``sweep``: first remove temporary files of
    ``path`` left by killed processes (``sweep_stale``; off where a directory holds thousands of files).
    """
    if sweep:
        sweep_stale(path, log)
    fd, tmp = _create_temp(path)
    try:
        text = {} if binary else dict(encoding="utf-8", newline="")
        with os.fdopen(fd, "wb" if binary else "w", **text) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        source = path if os.path.exists(path) else mode_from
        if source is not None:
            os.chmod(tmp, os.stat(source).st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path, text: str, **kwargs) -> None:
    """``Path(path).write_text(text, encoding="utf-8")``, atomically (keyword arguments: ``atomic_write``)."""
    with atomic_write(path, **kwargs) as f:
        f.write(text)


def write_lines(path, lines, **kwargs) -> None:
    """One string per line, each ended by ``\\n``, atomically."""
    with atomic_write(path, **kwargs) as f:
        f.writelines(f"{line}\n" for line in lines)
