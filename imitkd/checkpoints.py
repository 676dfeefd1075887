"""Safe checkpoint loading: the one ``torch.load`` fairseq's checkpoint code uses once imitkd is imported.

A ``.pt`` file is a pickle, and a full unpickle can run any code the file names. Every checkpoint that
``fairseq.checkpoint_utils`` reads (``--expert``, ``--path``, ``--restore-file``/``checkpoint_last.pt``,
``--load-pretrained-encoder-from``/``-decoder-from``, EMA loads) goes through :func:`load`, which
unpickles with ``weights_only=True``: tensors, containers and primitives, plus :data:`ALLOWED_GLOBALS`,
the few other types checkpoints written by fairseq-train actually contain.

A file that needs more stops with one line naming it and its first disallowed global. The opt-out is
explicit and per run: ``--trust-checkpoint`` on the imitkd-* console scripts, or the environment variable
``IMITKD_TRUST_CHECKPOINTS=1`` (for fairseq-* CLIs with ``--user-dir``). With it, such a file is loaded by
full pickle after a warning that names it; files that pass the safe load are still loaded safely.

A file that is empty, truncated (e.g. still being written) or no torch file at all stops with one line
naming it, instead of a ``RuntimeError``/``EOFError`` from deep inside torch.
"""
import argparse
import logging
import os
import pickle
import re
import zipfile
from typing import Optional

import numpy as np
import torch

from .errors import ImitKDError

logger = logging.getLogger(__name__)

TRUST_ENV = "IMITKD_TRUST_CHECKPOINTS"
TRUST_FLAG = "--trust-checkpoint"

_reconstruct = np._core.multiarray._reconstruct

#: What fairseq checkpoints contain beyond tensors/containers/primitives (found by listing
#: ``torch.serialization.get_unsafe_globals_in_checkpoint`` over checkpoints written by fairseq-train:
#: text transformer and s2t_transformer, best/last/epoch/update checkpoints with adam, sgd, adafactor and
#: --amp optimizer state, --store-ema, models cast to fp16/bf16, ensemble members):
#:
#: * ``argparse.Namespace``: the model config (``cfg.model``) and legacy ``args`` of every checkpoint;
#: * int64 and float64 numpy arrays (``ndarray`` rebuilt by ``_reconstruct`` with a ``dtype``): the metrics
#:   state in ``extra_state`` of runs with ``--eval-bleu`` (the BLEU n-gram counts are logged as arrays:
#:   int64 by fairseq's translation task, float64 by speech_to_text_kd). The alias
#:   ``numpy.core.multiarray._reconstruct`` is the same function under numpy < 2, which wrote that name.
#:   Arrays of other dtypes (object arrays included) are refused: their dtype class is not listed.
ALLOWED_GLOBALS = [
    argparse.Namespace,
    np.ndarray,
    np.dtype,
    np.dtypes.Int64DType,
    np.dtypes.Float64DType,
    _reconstruct,
    (_reconstruct, "numpy.core.multiarray._reconstruct"),
]

#: the pickle names of :data:`ALLOWED_GLOBALS` (as ``torch.serialization.get_unsafe_globals_in_checkpoint``
#: reports them)
ALLOWED_NAMES = frozenset(g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}"
                          for g in ALLOWED_GLOBALS)

_TRUE = ("1", "true", "yes", "y")
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a"  # torch.save before 1.6: pickled magic number, protocol 2
_ZIP_MAGIC = b"PK\x03\x04"


def path_problem(path) -> Optional[str]:
    """Why ``path`` cannot be read as a checkpoint file ("is a directory, not a checkpoint file" or
    "checkpoint not found"), for a flag's one-line error; None if it is a file."""
    if os.path.isfile(path):
        return None
    return "is a directory, not a checkpoint file" if os.path.isdir(path) else "checkpoint not found"


def unloadable_checkpoint(e: BaseException) -> Optional[str]:
    """The checkpoint named by fairseq's "Cannot load model parameters from checkpoint PATH; ..." (how
    ``Trainer.load_checkpoint`` fails, its cause in ``e.__context__``); None for other errors."""
    message, prefix = str(e), "Cannot load model parameters from checkpoint "
    if type(e) is Exception and message.startswith(prefix):
        return message[len(prefix):].split("; please")[0]
    return None


def trusted() -> bool:
    """Whether this run opted out of safe loading (``--trust-checkpoint`` or ``IMITKD_TRUST_CHECKPOINTS``)."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in _TRUE


def strip_trust_flag(argv: list) -> list:
    """``argv`` without ``--trust-checkpoint``; if it was there, the opt-out is set for this process (and
    its children, e.g. data-parallel workers) through the environment variable."""
    if TRUST_FLAG not in argv:
        return argv
    os.environ[TRUST_ENV] = "1"
    return [a for a in argv if a != TRUST_FLAG]


def load(f, map_location=None, **kwargs):
    """``torch.load`` for checkpoints: ``weights_only=True`` with :data:`ALLOWED_GLOBALS`. ``f`` is a path
    or an open file. Raises :class:`ImitKDError` (one line naming the file) for a file that needs more
    (unless trusted), and for an empty, truncated or foreign file."""
    kwargs.pop("weights_only", None)
    kwargs.pop("pickle_module", None)
    name = _name(f)
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(f, map_location=map_location, weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        if not str(e).startswith("Weights only load failed"):
            _raise_if_broken(name, e)
            raise
        _raise_if_broken(name, e, foreign_only=True)  # e.g. a text file: its bytes read as odd pickle opcodes
        what = _first_disallowed(str(e))
        if not trusted():
            raise ImitKDError(
                f"refusing to load checkpoint {name}: it pickles {what}, which is not among the types fairseq "
                f"checkpoints need (unpickling it could run code); if you trust this file, rerun with "
                f"{TRUST_FLAG} (imitkd-* scripts) or {TRUST_ENV}=1 (fairseq-* with --user-dir)") from None
    except (RuntimeError, EOFError, KeyError, IndexError, ValueError, zipfile.BadZipFile) as e:
        _raise_if_broken(name, e)
        raise
    logger.warning(f"{TRUST_FLAG}/{TRUST_ENV}: loading checkpoint {name} by full pickle (weights_only=False; "
                   f"it pickles {what}): this runs any code the file contains")
    if hasattr(f, "seek"):
        f.seek(0)
    return torch.load(f, map_location=map_location, weights_only=False, **kwargs)


def _name(f) -> str:
    if isinstance(f, (str, os.PathLike)):
        return os.fspath(f)
    return str(getattr(f, "name", "<stream>"))


def _first_disallowed(message: str) -> str:
    """The global torch's weights-only unpickler stopped at, e.g. ``posix.system``."""
    m = re.search(r"GLOBAL (\S+)", message) or re.search(r"but got <class '([^']+)'>", message)
    if m:
        return m.group(1)
    m = re.search(r"WeightsUnpickler error:\s*(.+)", message)
    return f"something else ({m.group(1).strip()})" if m else "an object the safe unpickler rejects"


def _raise_if_broken(name: str, exc: BaseException, foreign_only: bool = False) -> None:
    """Turn the error of an empty/truncated/foreign file into one line; leave other errors alone
    (``foreign_only``: only empty files and files that are no torch file at all)."""
    if not os.path.isfile(name):
        return
    size = os.path.getsize(name)
    with open(name, "rb") as fh:
        head = fh.read(len(_LEGACY_MAGIC))
    if size == 0:
        what = "the file is empty"
    elif foreign_only and (head.startswith(_ZIP_MAGIC) or head == _LEGACY_MAGIC):
        return
    elif head.startswith(_ZIP_MAGIC):
        if zipfile.is_zipfile(name):
            if not (isinstance(exc, RuntimeError) and "PytorchStreamReader" in str(exc)):
                return
            what = "its zip archive is corrupt"
        else:
            what = "its zip archive ends early (no central directory)"
    elif head == _LEGACY_MAGIC:
        if not (isinstance(exc, (EOFError, pickle.UnpicklingError, IndexError))
                or (isinstance(exc, RuntimeError) and "unexpected EOF" in str(exc))):
            return
        what = "its legacy torch pickle ends early"
    else:
        what = "it is neither a torch zip archive nor a legacy torch file"
    raise ImitKDError(f"checkpoint {name} is truncated or not a checkpoint: {what} ({size} bytes; "
                      "still being written, or an interrupted copy?)") from None
