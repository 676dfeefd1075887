"""The demo's training runs and decodings, forked from one process that imported torch, fairseq and the
plugin once.

A training run of the ci preset (``imitkd-train``) or a decoding of a test set (``imitkd-generate``,
``ctc_transcribe.py``) takes a few seconds of a core; starting a Python and importing torch, fairseq and
``imitkd`` first takes ≈ 6–7.5 s more, and the small demo starts ≈ 10 training runs and ≈ 40 decodings.
``ForkedRun`` therefore forks each from a multiprocessing *forkserver* that imported those modules once.
The forkserver is a separate, single-threaded process, so forking it is safe while the demo's own
threads run. The child names itself after the command (``/proc/self/comm``: ``ps -o comm``, ``top``).
Where ``forkable`` says no (no forkserver, as on Windows, or any other command), the demo starts a
subprocess as before (``run_demo.Children``).
"""
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import os
import runpy
import sys
import tempfile
import threading
import traceback

#: imported once, in the forkserver (multiprocessing skips one that fails to import). ``torch._dynamo``: torch's
#: optimizers import it when the first one is built, and a decoding's checkpoint load imports its sympy-based
#: shape module; unloaded, every training run paid ≈ 1.2 s and every decoding ≈ 0.4 s for it (AVX2, one core)
PRELOAD = ["torch", "torch._dynamo", "fairseq_cli.train", "fairseq_cli.generate", "imitkd.cli", "forked_runs"]
#: the console scripts a child runs as functions of ``imitkd.cli`` (not ``imitkd-preprocess``: with its pool of
#: workers started inside the forked child, the ci expert's binarisation took 53 s against ≈ 5 s as a subprocess)
CONSOLE_SCRIPTS = ("imitkd-train", "imitkd-generate", "imitkd-average-checkpoints")
_CONTEXT = None
_LOCK = threading.Lock()
#: held for every read of a child's exit status. The forkserver sends it once, on the child's sentinel pipe, to
#: whoever reads first; any other reader gets EOF and multiprocessing reports exit status 255. The demo's lanes
#: are threads: one waiting for its decoding (``join``) lost that read to another starting a run
#: (``Process.start`` polls every finished child), and a decoding that had succeeded "failed (exit 255)".
_STATUS_LOCK = threading.RLock()


def forkable(cmd, script_names=("ctc_transcribe.py",)) -> bool:
    """Whether ``cmd`` can run in a forked child: one of ``CONSOLE_SCRIPTS`` or one of ``script_names``
    run by this Python, on a platform with a forkserver."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    exe = os.path.basename(str(cmd[0]))
    return exe in CONSOLE_SCRIPTS or (str(cmd[0]) == sys.executable and len(cmd) > 1
                                      and os.path.basename(str(cmd[1])) in script_names)


def _context():
    """The forkserver context. Its server starts here, once, and imports ``PRELOAD``, with the environment
    the demo has then (``OMP_NUM_THREADS`` is read when torch is imported) and this module's directory put
    first on its ``PYTHONPATH``: Python 3.11's forkserver ignores the ``sys.path`` it is handed, so it could
    not preload this module, and every child imported it from disk again; a demo whose checkout changed
    under it (a ``git pull`` that renamed this file) then failed at its next fork."""
    global _CONTEXT
    with _LOCK:
        if _CONTEXT is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(PRELOAD)
            before = os.environ.get("PYTHONPATH")
            here = os.path.dirname(os.path.abspath(__file__))
            os.environ["PYTHONPATH"] = os.pathsep.join([here] + ([before] if before else []))
            try:
                multiprocessing.forkserver.ensure_running()
            finally:
                if before is None:
                    del os.environ["PYTHONPATH"]
                else:
                    os.environ["PYTHONPATH"] = before
            _CONTEXT = ctx
    return _CONTEXT


def _name_process(argv) -> None:
    """``ps -o comm``/``top`` show the command (15 characters) instead of the forkserver's Python."""
    script = os.path.basename(argv[0] if os.path.basename(argv[0]) in CONSOLE_SCRIPTS else argv[1])
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(script[:15])
    except OSError:  # not Linux
        pass


def _child(argv, out_path: str, append: bool, cwd: str, threads: int) -> None:
    """In the forked child: stdout and stderr to ``out_path`` (appended to, or from its start), then the
    console script or the script with ``argv`` as ``sys.argv``; the exit status as a subprocess would give it."""
    fd = os.open(out_path, os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC))
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.chdir(cwd)
    _name_process(argv)
    code = 0
    try:
        import warnings

        import torch

        warnings.simplefilter("ignore")  # as the demo's subprocesses (PYTHONWARNINGS=ignore)

        if threads:
            torch.set_num_threads(threads)
        script = os.path.basename(argv[0])
        if script in CONSOLE_SCRIPTS:
            from imitkd import cli

            sys.argv = [script, *argv[1:]]
            getattr(cli, script.split("-", 1)[1].replace("-", "_"))()
        else:
            sys.argv = list(argv[1:])
            runpy.run_path(argv[1], run_name="__main__")
    except SystemExit as e:  # sys.exit(None | int | message), as the interpreter would end
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: B036 (reported in the output, as Python would)
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


class ForkedRun:
    """A command running in a forked child, with the part of ``subprocess.Popen`` that the demo's
    ``Children`` uses (``poll``, ``terminate``, ``communicate``, ``returncode``).

    Its stdout and stderr go to ``out_path`` (appended; the caller reads it as it grows) or, without one,
    to a temporary file that ``communicate`` returns and removes."""

    def __init__(self, cmd, cwd, threads: int, out_path=None):
        self.owns_output = out_path is None
        if self.owns_output:
            fd, out_path = tempfile.mkstemp(prefix="imitkd-run-", suffix=".log")
            os.close(fd)
        self.out_path = str(out_path)
        self.args = [str(c) for c in cmd]
        self.proc = _context().Process(target=_child, args=(self.args, self.out_path, not self.owns_output,
                                                            str(cwd), threads))
        with _STATUS_LOCK:  # (start() reads the exit status of every child that has ended)
            self.proc.start()

    def poll(self):
        with _STATUS_LOCK:
            return self.proc.exitcode

    def terminate(self):
        with _STATUS_LOCK:
            self.proc.terminate()

    def communicate(self):
        """Wait for the child; (its output, stdout and stderr together, as text; None), as ``Popen``'s
        (the output is the temporary file's; ``None`` with an ``out_path`` of the caller's)."""
        multiprocessing.connection.wait([self.proc.sentinel])  # (without the lock: other threads go on)
        with _STATUS_LOCK:
            self.proc.join()
        if not self.owns_output:
            return None, None
        try:
            with open(self.out_path, encoding="utf-8", errors="replace") as f:
                return f.read(), None
        finally:
            os.unlink(self.out_path)

    @property
    def returncode(self):
        return self.poll()
