"""Checks of the speech_to_text data config (``--config-yaml``), run before fairseq reads it.

fairseq reads the file where and when it needs a key, so a bad config shows up as a traceback from deep
inside it, some only after the expert is built or mid-training (``audio_root``). :func:`check_data_config`
raises one line naming the file (and line or key) instead: a missing file (it is relative to the data
directory), invalid YAML, a YAML that is no mapping, a missing ``vocab_filename``, a missing or broken
``bpe_tokenizer.sentencepiece_model``, a transform fairseq does not know and a missing ``audio_root``.
"""
from pathlib import Path

import yaml

from imitkd_data.errors import yaml_error

from .errors import ImitKDError

#: the config keys that list transforms per split, and the kind of fairseq's registry for their names
TRANSFORM_KEYS = {"transforms": "feature", "feature_transforms": "feature", "waveform_transforms": "waveform",
                  "dataset_transforms": "dataset"}


def check_data_config(data: str, config_yaml: str) -> dict:
    """The parsed config ``DATA/CONFIG_YAML``; raises :class:`ImitKDError` for what fairseq would fail on."""
    path = Path(data) / config_yaml
    if not path.is_file():
        raise ImitKDError(f"--config-yaml {config_yaml}: data config not found: {path} "
                          "(a relative path is read from the data directory)")
    config = read_yaml_mapping(path)
    vocab = config.get("vocab_filename", "dict.txt")
    if not (Path(data) / str(vocab)).is_file():
        raise ImitKDError(f"{path}: vocab_filename: dictionary not found: {Path(data) / str(vocab)} "
                          "(relative to the data directory)")
    _check_bpe(path, config.get("bpe_tokenizer"))
    for key, kind in TRANSFORM_KEYS.items():
        _check_transforms(path, key, config.get(key), kind)
    audio_root = config.get("audio_root")
    if audio_root and not Path(str(audio_root)).is_dir():
        raise ImitKDError(f"{path}: audio_root: no such directory: {audio_root}")
    return config


def read_yaml_mapping(path: Path) -> dict:
    """``path`` parsed as fairseq parses it; one line (with the line number of a syntax error) otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.load(f, Loader=yaml.FullLoader)
    except yaml.YAMLError as e:
        raise ImitKDError(f"{yaml_error(path, e)} (--config-yaml)") from None
    except UnicodeDecodeError as e:
        raise ImitKDError(f"{path}: not UTF-8 (byte 0x{e.object[e.start]:02x} at offset {e.start}) (--config-yaml)") from None
    if not isinstance(config, dict):
        what = "empty" if config is None else f"a YAML {type(config).__name__}"
        raise ImitKDError(f"{path}: {what}, not a mapping of keys (input_feat_per_channel: 80, vocab_filename: "
                          "dict.txt, ...) (--config-yaml)")
    return config


def _check_bpe(path: Path, bpe) -> None:
    """``bpe_tokenizer``: a mapping; its ``sentencepiece_model`` (absolute, relative to the working directory
    or to the config's directory, as fairseq resolves it) exists and loads."""
    if bpe is None:
        return
    if not isinstance(bpe, dict):
        raise ImitKDError(f"{path}: bpe_tokenizer must be a mapping (bpe: sentencepiece, sentencepiece_model: FILE), "
                          f"got {bpe!r}")
    model = bpe.get("sentencepiece_model")
    if model is None:
        return
    found = next((p for p in (Path(str(model)), path.parent / str(model)) if p.is_file()), None)
    if found is None:
        raise ImitKDError(f"{path}: bpe_tokenizer.sentencepiece_model: file not found: {model}")
    import sentencepiece as spm

    try:
        spm.SentencePieceProcessor(model_file=str(found))
    except (RuntimeError, OSError) as e:
        raise ImitKDError(f"{path}: bpe_tokenizer.sentencepiece_model {found}: not a sentencepiece model "
                          f"({' '.join(str(e).split())})") from None


def _check_transforms(path: Path, key: str, section, kind: str) -> None:
    """``key`` maps splits (``_train``, ``_eval``, ``*``, a split name) to names of fairseq's ``kind`` transforms."""
    if section is None:
        return
    if not isinstance(section, dict):
        raise ImitKDError(f"{path}: {key} must map splits (_train, _eval, '*') to lists of transforms, got {section!r}")
    known = transform_names(kind)
    for split, names in section.items():
        if names is not None and not isinstance(names, list):
            raise ImitKDError(f"{path}: {key}.{split} must be a list of transform names, got {names!r}")
        for name in names or []:
            if name not in known:
                raise ImitKDError(f"{path}: {key}.{split}: unknown {kind} transform {name!r} "
                                  f"(fairseq has: {', '.join(sorted(known))})")


def transform_names(kind: str) -> set:
    """The names fairseq's registry of ``kind`` (feature, waveform, dataset) audio transforms knows."""
    import importlib

    module = importlib.import_module(f"fairseq.data.audio.{kind}_transforms")
    return set(getattr(module, f"AUDIO_{kind.upper()}_TRANSFORM_REGISTRY"))
