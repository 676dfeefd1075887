"""The fairseq S2T data config (``config.yaml`` for ``--config-yaml``) of a prepared data dir."""
from pathlib import Path
from typing import Optional

from . import atomic
from .errors import DataPrepError
from .features import N_MEL_BINS, SAMPLE_RATE

# fairseq's S2TDataConfigWriter policies (examples/speech_to_text/data_utils.py)
SPECAUGMENT_POLICIES = {
    "lb": dict(time_warp_W=0, freq_mask_N=1, freq_mask_F=27, time_mask_N=1, time_mask_T=100, time_mask_p=1.0),
    "ld": dict(time_warp_W=0, freq_mask_N=2, freq_mask_F=27, time_mask_N=2, time_mask_T=100, time_mask_p=1.0),
    "sm": dict(time_warp_W=0, freq_mask_N=2, freq_mask_F=15, time_mask_N=2, time_mask_T=70, time_mask_p=0.2),
    "ss": dict(time_warp_W=0, freq_mask_N=2, freq_mask_F=27, time_mask_N=2, time_mask_T=70, time_mask_p=0.2),
}


def write_config(
    out_dir: Path,
    vocab_filename: str,
    spm_model: Optional[Path] = None,
    cmvn: Optional[str] = None,
    specaugment: Optional[str] = None,
    audio_root: Optional[Path] = None,
    filename: str = "config.yaml",
    sample_rate: Optional[int] = SAMPLE_RATE,
) -> Path:
    """fairseq S2T data config. ``specaugment`` implies utterance CMVN (fairseq's gen_config_yaml does the same).
    ``sample_rate``: the rate the features were computed at (fairseq's own ``sample_rate`` key)."""
    import yaml

    cfg = {"input_channels": 1, "input_feat_per_channel": N_MEL_BINS, "vocab_filename": vocab_filename}
    if sample_rate is not None:
        cfg["sample_rate"] = int(sample_rate)
    if spm_model is not None:
        cfg["bpe_tokenizer"] = {"bpe": "sentencepiece", "sentencepiece_model": str(Path(spm_model).resolve())}
    if audio_root is not None:
        cfg["audio_root"] = str(Path(audio_root).resolve())
    if specaugment is not None:
        if specaugment not in SPECAUGMENT_POLICIES:
            raise DataPrepError(f"unknown SpecAugment policy {specaugment!r} (choose from {', '.join(SPECAUGMENT_POLICIES)})")
        cmvn = cmvn or "utterance"
        cfg["specaugment"] = dict(SPECAUGMENT_POLICIES[specaugment])
    if cmvn is not None:
        if cmvn != "utterance":
            raise DataPrepError(f"unsupported --cmvn {cmvn!r} (only 'utterance')")
        cfg["transforms"] = {"*": ["utterance_cmvn"]}
        if specaugment is not None:
            cfg["transforms"]["_train"] = ["utterance_cmvn", "specaugment"]
    path = Path(out_dir) / filename
    atomic.write_text(path, yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return path
