"""The runtime fixes of imitkd.compat, each shown to matter."""
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import imitkd  # noqa: F401  (applies the fixes)
from fairseq import checkpoint_utils
from fairseq.data import data_utils
from fairseq.data.audio.audio_utils import get_features_or_waveform

from imitkd.features import kaldi_fbank


def test_fairseq_checkpoints_load_under_torch_2_13(toy):
    ckpt = toy / "expert" / "checkpoint_best.pt"
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(ckpt)  # the default that breaks fairseq: the fix is needed, and it is scoped
    state = checkpoint_utils.load_checkpoint_to_cpu(str(ckpt))
    assert state["cfg"].task._name == "translation" and state["model"]


@pytest.mark.parametrize("n", [1, 7, 8, 13, 50])
def test_batch_by_size_never_drops_the_last_batch(n):
    indices = np.arange(n, dtype=np.int64)
    batches = data_utils.batch_by_size(indices, lambda i: 10, max_tokens=None, max_sentences=6,
                                       required_batch_size_multiple=8)
    assert sorted(int(i) for b in batches for i in b) == list(range(n))


def test_raw_audio_manifest_gives_kaldi_fbank(tmp_path):
    sr = 16000
    t = np.arange(int(0.6 * sr)) / sr
    wav = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * np.random.default_rng(0).normal(size=t.size)).astype(np.float32)
    path = tmp_path / "a.wav"
    sf.write(path, wav, sr, subtype="PCM_16")
    feats = get_features_or_waveform(str(path))
    pcm, _ = sf.read(path, dtype="float32")
    expected = kaldi_fbank(pcm * 32768, sr)
    assert feats.shape == (58, 80)
    np.testing.assert_allclose(feats, expected, rtol=0, atol=1e-4)
    assert np.isfinite(feats).all() and feats.std() > 1.0  # a real spectrum, not a floor


def test_float16_features_reach_the_transforms_as_float32(tmp_path):
    """Features stored as float16 (FeatureStore, as the data tools' --feature-dtype float16 stores them): fairseq
    gave the float16 array to utterance_cmvn, whose sum of squares overflows in float16 for an utterance of a
    few seconds (here: inf/NaN model input). Read as float32, the dataset's item equals the float32-stored
    features' item to within float16's rounding."""
    import fairseq.data.audio.audio_utils as audio_utils
    from fairseq.data import Dictionary
    from fairseq.data.audio.data_cfg import S2TDataConfig
    from fairseq.data.audio.feature_transforms.utterance_cmvn import UtteranceCMVN
    from fairseq.data.audio.speech_to_text_dataset import SpeechToTextDatasetCreator

    from imitkd_data.data_config import write_config
    from imitkd_data.feature_store import FeatureStore

    sr = 16000
    t = np.arange(5 * sr) / sr  # 5 s: a rising tone in noise, ~500 frames
    wav = 0.3 * np.sin(2 * np.pi * 200 * t * (1 + 0.3 * t)) + 0.05 * np.random.default_rng(0).normal(size=t.size)
    feats = kaldi_fbank((wav * 32768).astype(np.float32), sr)
    items = {}
    for dtype in ("float32", "float16"):
        out = tmp_path / dtype
        store = FeatureStore(out)
        store.save("u0", feats, dtype)
        audio, n_frames = store.pack(progress=False)["u0"]
        (out / "test.tsv").write_text(f"id\taudio\tn_frames\ttgt_text\tspeaker\nu0\t{audio}\t{n_frames}\ta\ts\n")
        (out / "dict.txt").write_text("a 1\n")
        cfg = S2TDataConfig(write_config(out, "dict.txt", cmvn="utterance", audio_root=out))
        ds = SpeechToTextDatasetCreator.from_tsv(str(out), cfg, "test", Dictionary.load(str(out / "dict.txt")), None,
                                                 None, is_train_split=False, epoch=1, seed=1)
        items[dtype] = ds[0].source
    # the failure the fix prevents: the stored float16 array through utterance_cmvn, as fairseq read it
    path, offset, length = (tmp_path / "float16" / audio.split(":")[0]), *map(int, audio.split(":")[1:])
    raw = audio_utils.get_features_or_waveform_from_stored_zip.__wrapped__(str(path), offset, length)
    assert raw.dtype == np.float16
    with np.errstate(all="ignore"):
        assert not np.allclose(UtteranceCMVN()(raw).astype(np.float32), items["float32"].numpy(), atol=0.1)
    assert items["float16"].dtype == torch.float32 and torch.isfinite(items["float16"]).all()
    assert items["float16"].shape == (feats.shape[0], 80) and feats.shape[0] > 400
    torch.testing.assert_close(items["float16"], items["float32"], rtol=0, atol=0.05)


def test_import_leaves_the_programs_logging_alone():
    """fairseq's wav2vec2_classification calls logging.basicConfig(level=DEBUG) on import; after `import imitkd`
    a program that configured nothing still has an unconfigured root logger (no DEBUG flood on stderr), and
    one that configured logging keeps its handler and level."""
    import subprocess
    import sys

    probe = ("import logging{pre}; import imitkd; import fairseq.models.wav2vec.wav2vec2_classification; "
             "root = logging.getLogger(); print(root.level, len(root.handlers)); "
             "logging.getLogger('matplotlib').debug('font search')")
    plain = subprocess.run([sys.executable, "-c", probe.format(pre="")], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.split() == [str(logging.WARNING), "0"] and "font search" not in plain.stderr
    configured = subprocess.run(
        [sys.executable, "-c", probe.format(pre="; logging.basicConfig(level=logging.INFO, format='%(message)s')")],
        capture_output=True, text=True, timeout=300)
    assert configured.stdout.split() == [str(logging.INFO), "1"] and "font search" not in configured.stderr


_EXITS_WHILE_PREFETCHING = """
import sys
import threading
import torch
torch.set_num_threads(1)
if sys.argv[1] == "plugin":
    import imitkd  # noqa: F401
from fairseq.data.iterators import BufferedIterator

in_torch_op = threading.Event()

class SlowBatches:  # the second batch is one torch call of about a second, without the GIL
    def __len__(self):
        return 3
    def __iter__(self):
        yield 0
        x = torch.randn(600, 600) / 25
        in_torch_op.set()
        yield torch.linalg.matrix_power(x, 40).sum()
        yield 2

batches = BufferedIterator(1, SlowBatches())  # fairseq's prefetch thread
next(batches)
in_torch_op.wait()
print("done")  # and return, as a run that stops at --max-update does
"""


def test_exit_while_fairseq_prefetches_a_batch_does_not_abort(tmp_path):
    """A run that stops early (e.g. --max-update) returns while fairseq's daemon prefetch thread is inside a
    torch op; without the exit hook CPython 3.11 aborts the finished process ("terminate called without
    an active exception", SIGABRT)."""
    script = tmp_path / "stop_early.py"
    script.write_text(_EXITS_WHILE_PREFETCHING)

    env = {**os.environ, "PYTHONPATH": str(Path(imitkd.__file__).parents[1])}  # the imitkd under test

    def run(mode):
        return subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=120,
                              env=env)

    if sys.version_info < (3, 14):  # 3.14 parks such threads instead of unwinding them
        bare = run("bare")
        assert bare.returncode == -signal.SIGABRT and "terminate called" in bare.stderr, bare.stderr[-500:]
    for _ in range(2):
        fixed = run("plugin")
        assert fixed.returncode == 0 and fixed.stdout == "done\n", fixed.stderr[-2000:]
        assert "terminate called" not in fixed.stderr
