"""DDTP-ST provenance: the build parameters, ``MANIFEST.json`` and the check that a build is complete.

``MANIFEST.json`` records the inputs (sha256 of Translation-en/-de and the apt source they came from), the
parameters, espeak-ng and package versions, and the sha256 of every output; ``is_complete`` re-checks
them, so re-running a finished build only verifies it.
"""
import datetime
import hashlib
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .. import atomic
from .speech import (GAIN, PITCH, RATE, SAMPLE_RATE, SEEN_VOICES, SNR_DB, TRAIN_SPLITS, TRAIN_VOICES, UNSEEN_ENGINE_SPLITS,
                     UNSEEN_ENGINE_VOICES, UNSEEN_VOICES)
from .text import SIZES, SPLIT_RULE, WORD_LIST, Pair

#: bump when the same parameters would give other outputs (a cached corpus is then rebuilt)
BUILDER_VERSION = 1
MANIFEST = "MANIFEST.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def text_sha256(text: Dict[str, List[Pair]]) -> str:
    """Digest of the selected pairs ({split: pairs}), part of the parameters."""
    return hashlib.sha256(
        json.dumps({s: [asdict(p) for p in v] for s, v in text.items()}, ensure_ascii=False).encode()
    ).hexdigest()


def build_params(*, size: str, seed: int, counts: Optional[Dict[str, int]], feature_dtype: str, text_sha: str,
                 spm_vocab_size: Optional[int], spm_type: str, train_voices: str = "seen",
                 unseen_engine: Optional[str] = None) -> dict:
    """What a build's outputs depend on (MANIFEST.json ``params``); all but ``spm`` also fix the features.
    ``train_voices`` is recorded only when it is not ``seen`` and ``unseen_engine`` only when set, so earlier
    builds keep their parameters."""
    params = dict(
        builder_version=BUILDER_VERSION, size=size, seed=seed, counts=counts or {}, feature_dtype=feature_dtype,
        seen_voices=list(SEEN_VOICES), unseen_voices=list(UNSEEN_VOICES), text_sha256=text_sha,
    )
    if train_voices != "seen":
        params["train_voices"] = train_voices
    if unseen_engine:
        params["unseen_engine"] = unseen_engine
    params["spm"] = dict(vocab_size=spm_vocab_size, type=spm_type) if spm_vocab_size else None
    return params


def input_record(translations: Dict[str, Path], apt_source: Optional[dict]) -> dict:
    """MANIFEST.json ``inputs``: sha256, size and origin of each Translation file."""
    return {
        f"Translation-{lang}": dict(sha256=sha256_file(p), bytes=p.stat().st_size,
                                     source=apt_source["translations"][lang] if apt_source else "--translations-dir")
        for lang, p in translations.items()
    }


def is_complete(out_dir: Path, params: dict) -> bool:
    """``out_dir`` holds a finished build with these parameters, every output matching its recorded sha256."""
    m = out_dir / MANIFEST
    if not m.is_file():
        return False
    try:
        manifest = json.loads(m.read_text())
    except ValueError:
        return False
    if manifest.get("params") != params:
        return False
    return all((out_dir / name).is_file() and sha256_file(out_dir / name) == digest for name, digest in manifest["outputs"].items())


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("scipy", "soundfile", "kaldi-native-fbank", "sentencepiece"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def write_manifest_json(out_dir: Path, *, size: str, seed: int, params: dict, started: float, inputs: dict,
                        apt_source: Optional[dict], espeak_version: str, pools: Dict[str, int], splits: dict,
                        feature_dtype: str, spm: Optional[dict], outputs: List[str],
                        flite_version: Optional[str] = None) -> None:
    """Write ``MANIFEST.json`` (atomically): provenance of the build, the sha256 of every file in ``outputs``.
    ``started``: ``time.time()`` at the start of the build; ``splits``: per-split pairs/hours/voices."""
    train_voices = params.get("train_voices", "seen")  # build_params records it only when not "seen"
    engine = params.get("unseen_engine")
    manifest = dict(
        name="DDTP-ST en-de",
        builder="examples/speech_to_text/build_ddtp_st.py",
        size=size,
        seed=seed,
        params=params,
        created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        build_seconds=round(time.time() - started, 1),
        inputs=inputs,
        apt_source=apt_source,
        espeak_ng_version=espeak_version,
        **({"flite_version": flite_version} if engine else {}),
        voices=dict(seen=list(SEEN_VOICES), unseen=list(UNSEEN_VOICES),
                    **({"unseen_engine": list(UNSEEN_ENGINE_VOICES[engine])} if engine else {}),
                    **({} if train_voices == "seen" else {"train": dict(pool=train_voices, splits=list(TRAIN_SPLITS),
                                                                         voices=list(TRAIN_VOICES[train_voices]))})),
        synthesis=dict(rate=list(RATE), pitch=list(PITCH), peak_gain=list(GAIN), snr_db=list(SNR_DB),
                       sample_rate=SAMPLE_RATE, resample="scipy.signal.resample_poly up/down (22050->16000: 320/441)",
                       quantisation="int16"),
        text=dict(min_words=SIZES[size]["min_words"], max_words=SIZES[size]["max_words"],
                  plain_words=(dict(word_list=WORD_LIST, sha256=sha256_file(Path(WORD_LIST)))
                               if SIZES[size].get("plain") else False), split_rule=SPLIT_RULE,
                  dedup="masked skeleton of the English side", pool_sizes=pools,
                  unseen_splits="dev_unseen/test_unseen = dev/test sentences spoken by held-out voices"
                  + (f"; {'/'.join(UNSEEN_ENGINE_SPLITS)} = by {engine}" if engine else "")),
        splits=splits,
        features=dict(kind="80-dim Kaldi fbank (kaldi-native-fbank via imitkd_data.features)", dtype=feature_dtype,
                      file="fbank80.zip", frame_shift_ms=10),
        spm=spm,
        versions=dict(python=platform.python_version(), numpy=np.__version__, **_versions()),
        outputs={name: sha256_file(out_dir / name) for name in outputs},
    )
    atomic.write_text(out_dir / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
