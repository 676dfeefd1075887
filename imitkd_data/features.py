"""80-dim Kaldi log-mel filterbank features without torchaudio (kaldi-native-fbank).

Used by the compat patch of fairseq's raw-audio reader (``imitkd.compat``, through ``imitkd.features``) and
by the data-prep scripts, so that features computed offline and on the fly are identical. Audio is
resampled to one rate first (``SAMPLE_RATE``, 16 kHz, with ``scipy.signal.resample_poly``, as the DDTP-ST
synthesis does): the mel filterbank spans 0 Hz to half the sample rate, so features of a 22.05 kHz and
a 16 kHz copy of one utterance would otherwise differ in every bin.
"""
import math
from typing import BinaryIO, Optional, Union

import numpy as np

#: the one sample rate features are computed at (prep_s2t_data.py --sample-rate, the raw-audio path)
SAMPLE_RATE = 16000
#: mel bins of the stored features (``fbank80``)
N_MEL_BINS = 80


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


def compute_fbank(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """``N_MEL_BINS``-dim fbank, float32 ``(n_frames, 80)``, of a float waveform in [-1, 1] (scaled to int16
    range first, as fairseq's ``get_fbank`` does); the features prep_s2t_data.py and build_ddtp_st.py store."""
    return kaldi_fbank(np.asarray(waveform, dtype=np.float32) * 32768.0, sample_rate, N_MEL_BINS)


def read_audio(path_or_fp: Union[str, BinaryIO]):
    """Read wav/flac/ogg with soundfile; returns (mono float32 waveform in [-1, 1], sample_rate)."""
    import soundfile as sf

    wav, sr = sf.read(path_or_fp, dtype="float32", always_2d=True)
    return wav.mean(axis=1), sr


def resample(waveform: np.ndarray, sample_rate: int, target_rate: Optional[int] = SAMPLE_RATE):
    """(waveform at ``target_rate``, target_rate): polyphase resampling (``scipy.signal.resample_poly``,
    up/down by the rates' gcd, e.g. 22050 -> 16000: 320/441); unchanged if the rates agree or
    ``target_rate`` is None."""
    if target_rate is None or int(sample_rate) == int(target_rate):
        return waveform, sample_rate
    from scipy.signal import resample_poly

    g = math.gcd(int(target_rate), int(sample_rate))
    out = resample_poly(np.asarray(waveform, dtype=np.float64), int(target_rate) // g, int(sample_rate) // g)
    return out.astype(np.float32), int(target_rate)


def fbank_from_file(path_or_fp: Union[str, BinaryIO], n_bins: int = 80, waveform_transforms=None,
                    sample_rate: Optional[int] = SAMPLE_RATE) -> np.ndarray:
    """Drop-in replacement for ``fairseq.data.audio.audio_utils.get_fbank`` (same signature, plus
    ``sample_rate``: the audio is resampled to it first; None keeps the file's own rate)."""
    wav, sr = read_audio(path_or_fp)
    wav, sr = resample(wav, sr, sample_rate)
    wav = wav * 32768.0  # Kaldi expects int16-range samples, as fairseq's get_fbank feeds them
    if waveform_transforms is not None:
        wav, sr = waveform_transforms(wav[None], sr)
        wav = wav[0]
    return kaldi_fbank(wav, sr, n_bins)
