"""80-dim Kaldi log-mel filterbank features without torchaudio (kaldi-native-fbank).

Used by the compat patch of fairseq's raw-audio reader and by the data-prep scripts, so that
features computed offline and on the fly are identical.
"""
from typing import BinaryIO, Union

import numpy as np


def kaldi_fbank(waveform: np.ndarray, sample_rate: int, n_bins: int = 80) -> np.ndarray:
    """Kaldi fbank of a mono waveform in int16 range (e.g. ``wav_float * 32768``).

    Matches ``torchaudio.compliance.kaldi.fbank(num_mel_bins=n_bins, dither=0)`` (povey window,
    25 ms / 10 ms frames, pre-emphasis 0.97). Returns float32 ``(n_frames, n_bins)``; n_frames = 0 for
    audio shorter than one 25 ms window.
    """
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.samp_freq = float(sample_rate)
    opts.mel_opts.num_bins = n_bins
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(float(sample_rate), np.asarray(waveform, dtype=np.float32).reshape(-1))
    fbank.input_finished()
    n = fbank.num_frames_ready
    if n == 0:
        return np.zeros((0, n_bins), dtype=np.float32)
    return np.stack([fbank.get_frame(i) for i in range(n)]).astype(np.float32)


def read_audio(path_or_fp: Union[str, BinaryIO]):
    """Read wav/flac/ogg with soundfile; returns (mono float32 waveform in [-1, 1], sample_rate)."""
    import soundfile as sf

    wav, sr = sf.read(path_or_fp, dtype="float32", always_2d=True)
    return wav.mean(axis=1), sr


def fbank_from_file(path_or_fp: Union[str, BinaryIO], n_bins: int = 80, waveform_transforms=None) -> np.ndarray:
    """Drop-in replacement for ``fairseq.data.audio.audio_utils.get_fbank`` (same signature)."""
    wav, sr = read_audio(path_or_fp)
    wav = wav * 32768.0  # Kaldi expects int16-range samples, as fairseq's get_fbank feeds them
    if waveform_transforms is not None:
        wav, sr = waveform_transforms(wav[None], sr)
        wav = wav[0]
    return kaldi_fbank(wav, sr, n_bins)
