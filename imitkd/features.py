"""80-dim Kaldi fbank for the plugin's raw-audio path: ``imitkd_data.features``, re-exported.

The code lives in the fairseq-free package ``imitkd_data`` so that the data-prep scripts share it without
importing (and patching) fairseq; ``imitkd.compat`` and existing imports use this name.
"""
from imitkd_data.features import (  # noqa: F401
    N_MEL_BINS,
    SAMPLE_RATE,
    compute_fbank,
    fbank_from_file,
    kaldi_fbank,
    read_audio,
    resample,
)
