"""Decodings forked from one process that has imported torch, fairseq and the plugin once.

Decoding a test set of the demo (``imitkd-generate``, ``ctc_transcribe.py``) takes a few seconds of a
core. Starting a Python and importing torch, fairseq and ``imitkd`` first takes ≈ 7.5 s more, and the
small demo runs ≈ 40 decodings. ``ForkedRun`` therefore forks each one from a multiprocessing
*forkserver* that imported those modules once. The forkserver is a separate, single-threaded process, so
forking it is safe while the demo's own threads run. Where ``forkable`` says no (no forkserver, as on
Windows, or any other command), the demo starts a subprocess as before (``run_demo.Children.run_decoding``).
"""
import multiprocessing
import os
import runpy
import sys
import tempfile
import traceback

#: imported once, in the forkserver (multiprocessing skips one that fails to import)
PRELOAD = ["torch", "fairseq_cli.generate", "imitkd.cli", "forked_decoding"]
_CONTEXT = None


def forkable(cmd, script_names=("ctc_transcribe.py",)) -> bool:
    """Whether ``cmd`` can run in a forked child: ``imitkd-generate`` or one of ``script_names`` run by
    this Python, on a platform with a forkserver."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    exe = os.path.basename(str(cmd[0]))
    return exe == "imitkd-generate" or (str(cmd[0]) == sys.executable and len(cmd) > 1
                                        and os.path.basename(str(cmd[1])) in script_names)


def _context():
    """The forkserver context; its server starts (and imports ``PRELOAD``) at the first ``start``,
    with the environment the demo has then (``OMP_NUM_THREADS`` is read when torch is imported)."""
    global _CONTEXT
    if _CONTEXT is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        _CONTEXT = ctx
    return _CONTEXT


def _child(argv, out_path: str, cwd: str, threads: int) -> None:
    """In the forked child: stdout and stderr to ``out_path``, then the console script or the script
    with ``argv`` as ``sys.argv``; the exit status as a subprocess would give it."""
    fd = os.open(out_path, os.O_WRONLY | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.chdir(cwd)
    code = 0
    try:
        import warnings

        import torch

        warnings.simplefilter("ignore")  # as the demo's subprocesses (PYTHONWARNINGS=ignore)

        if threads:
            torch.set_num_threads(threads)
        if os.path.basename(argv[0]) == "imitkd-generate":
            from imitkd.cli import generate

            sys.argv = ["imitkd-generate", *argv[1:]]
            generate()
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
    """A decoding running in a forked child, with the part of ``subprocess.Popen`` that the demo's
    ``Children`` uses to stop it (``poll``, ``terminate``)."""

    def __init__(self, cmd, cwd, threads: int):
        fd, self.out_path = tempfile.mkstemp(prefix="imitkd-decoding-", suffix=".log")
        os.close(fd)
        self.args = [str(c) for c in cmd]
        self.proc = _context().Process(target=_child, args=(self.args, self.out_path, str(cwd), threads))
        self.proc.start()

    def poll(self):
        return self.proc.exitcode

    def terminate(self):
        self.proc.terminate()

    def communicate(self):
        """Wait for the child; (its output, stdout and stderr together, as text; None), as ``Popen``'s."""
        self.proc.join()
        try:
            with open(self.out_path, encoding="utf-8", errors="replace") as f:
                return f.read(), None
        finally:
            os.unlink(self.out_path)

    @property
    def returncode(self):
        return self.proc.exitcode
