"""Runtime fixes that make ve-fairseq 0.12.3 work under torch 2.13 (applied on ``import imitkd``).

1. fairseq's checkpoint loading goes through ``imitkd.checkpoints.load``: ``weights_only=True`` with a
   small allowlist (``argparse.Namespace``, float64 numpy arrays) instead of torch's default, which
   refuses every fairseq checkpoint, and never a full pickle unless the run opts out
   (``--trust-checkpoint`` / ``IMITKD_TRUST_CHECKPOINTS=1``); empty or truncated files stop with one
   line. The patch is scoped to ``fairseq.checkpoint_utils`` and ``xm_transformer`` (a proxy of the
   ``torch`` module there), not process-wide.
2. Never drop the last batch: fairseq main drops a trailing batch whose size is not a multiple of
   ``--required-batch-size-multiple`` (default 8), so generate/validate silently skip sentences. We wrap
   ``data_utils.batch_by_size`` to append the dropped indices as a final, smaller batch.
3. Raw-audio manifests (.wav/.flac): fbank through kaldi-native-fbank instead of torchaudio, which
   cannot be imported next to torch 2.13.
4. Importing fairseq configures the *root* logger when the program has not: one of its models
   (``fairseq.models.wav2vec.wav2vec2_classification``) calls ``logging.basicConfig(level=DEBUG)`` at
   import time, so every library's debug records then reach stderr (e.g. 255 lines of matplotlib's font
   search when the demo draws its plot) and fairseq-train's own log format and INFO level are ignored.
   ``import imitkd`` undoes exactly what that import added (``keep_root_logging``); a program that
   configured logging itself keeps its configuration.
5. fairseq's batch-prefetching daemon threads are stopped at exit (``imitkd.prefetch_exit``): otherwise a
   finished run sporadically aborts during interpreter shutdown ("terminate called without an active
   exception", exit -6).
6. Features stored as float16 (the data tools' ``--feature-dtype float16``) are read as float32: fairseq
   hands the stored array to its feature transforms as it is, and ``utterance_cmvn`` sums squares in the
   array's dtype, which overflows float16 from ≈ 300 frames on (inf/NaN features: an ASR run stopped with
   "gradients are Nan/Inf" at its first update; decoding failed with fairseq's "assert step < max_len").
7. A checkpoint whose token embeddings do not fit the task's dictionaries (e.g. a regenerated
   ``vocab_filename``) stops generate, validate or a resumed training with one line naming the dictionary
   and the checkpoint, not torch's ``size mismatch`` traceback (``imitkd.dictionary_fit``).
Each patch is idempotent.
"""
import contextlib
import functools
import logging

import numpy as np
import torch

from . import checkpoints, prefetch_exit

logger = logging.getLogger(__name__)


class _TorchLoadProxy:
    """Stands in for ``torch`` inside ``fairseq.checkpoint_utils``; only ``load`` differs."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def load(*args, **kwargs):
        return checkpoints.load(*args, **kwargs)


def _keep_last_batch(batch_by_size):
    @functools.wraps(batch_by_size)
    def wrapper(indices, *args, **kwargs):
        batches = batch_by_size(indices, *args, **kwargs)
        if kwargs.get("fixed_shapes") is not None:
            return batches
        if not isinstance(indices, np.ndarray):
            indices = np.fromiter(indices, dtype=np.int64, count=-1)
        n_batched = sum(len(b) for b in batches)
        if n_batched < len(indices):
            batches = list(batches) + [np.asarray(indices[n_batched:], dtype=np.int64)]
        return batches

    wrapper._imitkd_keeps_last_batch = True
    return wrapper


def _float32_features(read):
    """Wrap a fairseq feature reader so that a float16 array comes back as float32 (fix 6)."""
    @functools.wraps(read)
    def wrapper(*args, **kwargs):
        out = read(*args, **kwargs)
        return out.astype(np.float32) if isinstance(out, np.ndarray) and out.dtype == np.float16 else out

    wrapper._imitkd_float32 = True
    return wrapper


@contextlib.contextmanager
def keep_root_logging():
    """Undo the root-logger handlers and level that the imports inside the block add (fix 4)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        if root.handlers != handlers or root.level != level:
            for h in [h for h in root.handlers if h not in handlers]:
                root.removeHandler(h)
            root.setLevel(level)


def apply():
    import fairseq.checkpoint_utils as checkpoint_utils
    import fairseq.data.audio.audio_utils as audio_utils
    from fairseq.data import data_utils

    from . import dictionary_fit
    from .features import fbank_from_file

    from fairseq.models.speech_to_text import xm_transformer

    for module in (checkpoint_utils, xm_transformer):  # xm_transformer: --load-pretrained-decoder-from
        if not isinstance(module.torch, _TorchLoadProxy):
            module.torch = _TorchLoadProxy()
    if not getattr(data_utils.batch_by_size, "_imitkd_keeps_last_batch", False):
        data_utils.batch_by_size = _keep_last_batch(data_utils.batch_by_size)
    audio_utils.get_fbank = fbank_from_file
    # the two readers get_features_or_waveform calls (through audio_utils' globals, so every importer of it)
    for name in ("get_features_from_npy_or_audio", "get_features_or_waveform_from_stored_zip"):
        if not getattr(getattr(audio_utils, name), "_imitkd_float32", False):
            setattr(audio_utils, name, _float32_features(getattr(audio_utils, name)))
    prefetch_exit.install()
    dictionary_fit.install()
