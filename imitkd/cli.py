"""Console scripts: fairseq's own CLIs with the plugin preloaded (no --user-dir needed).

Passing ``--user-dir <repo>/imitkd`` as well is harmless: fairseq sees the package already imported.
train/generate/validate also take ``--trust-checkpoint`` (see ``imitkd.checkpoints``; removed from argv
before fairseq parses it), and their ``-h``/``--help`` lists the flags of the chosen task, criterion and
the other chosen components (``imitkd.cli_help``), which fairseq's own help never shows.
"""
import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import imitkd  # noqa: F401  (registers the plugin and applies the compat fixes)

from . import checkpoints, cli_help
from .errors import ImitKDError, message, path_error

_LAST = "checkpoint_last.pt"  #: fairseq's default --restore-file (read from --save-dir)


def _usage_error(parser: argparse.ArgumentParser, message: str):
    """``ArgumentParser.error`` as one line: fairseq's parsers print their whole usage (≈ 200 lines) before it."""
    parser.exit(2, f"{parser.prog}: error: {message} ({parser.prog} -h lists the flags)\n")


def _run(main, loads_checkpoints=False, check=None):
    """Run a fairseq CLI ``main``; ``check(argv)`` first checks flags fairseq would fail on with a traceback
    (skipped for ``-h``). Bad input ends in one ``error: ...`` line and exit status 2 (argparse's own errors,
    such as an unknown flag, too: ``_usage_error``)."""
    error = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = _usage_error
    try:
        if loads_checkpoints:
            sys.argv = checkpoints.strip_trust_flag(sys.argv)
            cli_help.install_if_requested()
        if check is not None and not {"-h", "--help"} & set(sys.argv):
            check(sys.argv[1:])
        main()
    except ImitKDError as e:
        _fail(e)
    except OSError as e:  # a path fairseq cannot read or create (--save-dir under a file, no permission): one line
        _fail(path_error(e))
    except Exception as e:  # fairseq's failures to resume (a bare Exception, AssertionErrors): one line
        problem = resume_error(e, sys.argv[1:])
        if problem is None:
            raise
        _fail(problem)
    finally:
        argparse.ArgumentParser.error = error


def _fail(error: Exception):
    sys.stderr.write(f"error: {message(error)}\n")
    raise SystemExit(2)


def _flag_slots(argv: List[str], flag: str):
    """(index, prefix, value) of each value of ``flag`` in ``argv``: ``argv[index]`` is ``prefix + value``
    (prefix "" for ``--flag V``, ``"--flag="`` for ``--flag=V``). Exact names only, as fairseq's parsers
    read them (``allow_abbrev=False``): an abbreviation such as ``--max-tok 0`` is argparse's own
    "unrecognized arguments" error, never a value these checks miss."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            yield i + 1, "", argv[i + 1]
        elif arg.startswith(flag + "="):
            yield i, flag + "=", arg[len(flag) + 1:]


def flag_value(argv: List[str], flag: str, default: Optional[str] = None) -> Optional[str]:
    """The value of ``flag`` in ``argv`` (``--flag V`` or ``--flag=V``; the last one wins, as in argparse)."""
    return next(reversed([value for _, _, value in _flag_slots(argv, flag)]), default)


def _check_number(argv, flag, kind, low, high=None):
    """``flag`` (if given and a ``kind`` number; argparse reports other values) lies in [low, high]."""
    try:
        value = kind(flag_value(argv, flag))
    except (TypeError, ValueError):
        return
    if value < low or (high is not None and value > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ImitKDError(f"{flag} must be {bounds}, got {value}")


def _check_directory(argv, flag, default=None):
    """``flag`` names a directory or one that can be made: neither it nor a parent is a file."""
    value = flag_value(argv, flag, default)
    if not value:
        return
    path = Path(value)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "it is a file" if existing == path else f"{existing} is a file"
        raise ImitKDError(f"{flag} {value}: not a directory ({where})")


def check_train_flags(argv: List[str]) -> None:
    """imitkd-train: --seed, --max-tokens, --save-dir and an explicit --restore-file."""
    _check_number(argv, "--seed", int, 0, 2 ** 32 - 1)  # numpy's seed range
    _check_number(argv, "--max-tokens", int, 1)
    _check_directory(argv, "--save-dir", "checkpoints")
    restore = flag_value(argv, "--restore-file", _LAST)
    if restore != _LAST and not Path(restore).is_file():  # fairseq would silently train from scratch
        raise ImitKDError(f"--restore-file {restore}: checkpoint not found")


def check_model_paths(argv: List[str]) -> None:
    """imitkd-generate/-validate: every member of --path (``a.pt:b.pt``: an ensemble) is a checkpoint file."""
    value = flag_value(argv, "--path")
    if not value or "://" in value:  # fairseq reads URLs through its PathManager
        return
    for member in value.split(os.pathsep):
        what = checkpoints.path_problem(member)
        if what:
            where = f" (ensemble member {member})" if member != value else ""
            raise ImitKDError(f"--path {value}{where}: {what}")


def check_generate_flags(argv: List[str]) -> None:
    """imitkd-generate: --path, --beam, --max-len-a/-b against --min-len, --results-path."""
    check_model_paths(argv)
    _check_directory(argv, "--results-path")
    _check_number(argv, "--beam", int, 1)
    try:
        a, b = float(flag_value(argv, "--max-len-a", "0")), int(flag_value(argv, "--max-len-b", "200"))
        min_len = int(flag_value(argv, "--min-len", "1"))
    except ValueError:
        return
    if a == 0 and b < max(min_len, 1):
        raise ImitKDError(f"--max-len-b {b} with --max-len-a 0 leaves no room for an output of --min-len "
                          f"{min_len} token(s); set --max-len-b >= {max(min_len, 1)}")


def check_validate_flags(argv: List[str]) -> None:
    """imitkd-validate: --path, and a batch size (fairseq asserts one, with a traceback)."""
    check_model_paths(argv)
    if not any(flag_value(argv, flag) for flag in ("--max-tokens", "--batch-size", "--max-sentences")):
        raise ImitKDError("imitkd-validate needs --max-tokens N or --batch-size N (how much one batch holds)")


def with_flag_value(argv: List[str], flag: str, value: str) -> List[str]:
    """``argv`` with every value of ``flag`` (``--flag V`` or ``--flag=V``) replaced by ``value``."""
    out = list(argv)
    for i, prefix, _ in _flag_slots(argv, flag):
        out[i] = prefix + value
    return out


def keeping_results(main):
    """``main`` (fairseq's generate) with its --results-path output written atomically: fairseq opens
    ``RESULTS/generate-SUBSET.txt`` for writing before it loads the model, so a run that failed (a checkpoint
    that does not fit, an interrupted decoding) emptied the file of an earlier run. It writes into a temporary
    directory inside RESULTS instead; its files replace the earlier ones once it has succeeded."""
    def run():
        results = flag_value(sys.argv[1:], "--results-path")
        if not results:
            return main()
        os.makedirs(results, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".generate-", dir=results)
        argv = sys.argv
        try:
            sys.argv = [argv[0], *with_flag_value(argv[1:], "--results-path", tmp)]
            main()
            for name in os.listdir(tmp):
                os.replace(os.path.join(tmp, name), os.path.join(results, name))
        finally:
            sys.argv = argv
            shutil.rmtree(tmp, ignore_errors=True)
    return run


def resume_error(e: BaseException, argv: List[str]) -> Optional[ImitKDError]:
    """One line for fairseq's failures to resume training from a checkpoint (a model of another
    architecture; another criterion or optimizer), naming the checkpoint; None for other errors."""
    message, path = str(e), checkpoints.unloadable_checkpoint(e)
    if path is not None:
        cause = str(e.__context__ or "").strip().splitlines()
        detail = f" ({_abridged(cause[1].strip())})" if len(cause) > 1 else ""
        return ImitKDError(f"cannot resume from {path}: its model does not fit the one these flags build{detail}; "
                           "use the flags it was trained with (--arch, layers, dimensions), or a new --save-dir")
    if isinstance(e, AssertionError) and message.startswith(("Criterion does not match", "Optimizer does not match")):
        restore = flag_value(argv, "--restore-file", _LAST)
        path = os.path.join(flag_value(argv, "--save-dir", "checkpoints"), _LAST) if restore == _LAST else restore
        what = message.split()[0].lower()
        names = message.rsplit("(--reset-optimizer). ", 1)[-1].split(" vs ")
        used = f" {names[0]}, this run uses {names[1]}" if len(names) == 2 else " another one than this run"
        return ImitKDError(f"cannot resume from {path}: it was trained with the {what}{used}; "
                           "pass --reset-optimizer (keeps its weights, starts a fresh optimizer) or use a new --save-dir")
    return None


def _abridged(text: str, limit: int = 150) -> str:
    """``text`` cut after its last comma within ``limit`` characters (e.g. a list of state-dict keys)."""
    if len(text) <= limit:
        return text
    cut = text.rfind(", ", 0, limit)
    return f"{text[:cut if cut > 0 else limit]} ..."


def train():
    from fairseq_cli.train import cli_main
    _run(cli_main, loads_checkpoints=True, check=check_train_flags)


def generate():
    from fairseq_cli.generate import cli_main
    _run(keeping_results(cli_main), loads_checkpoints=True, check=check_generate_flags)


def validate():
    from fairseq_cli.validate import cli_main
    _run(cli_main, loads_checkpoints=True, check=check_validate_flags)


def preprocess():
    from fairseq_cli.preprocess import cli_main
    _run(cli_main)


def average_checkpoints():
    from .averaging import main
    raise SystemExit(main())
