"""Build the DDTP-ST en→de corpus: text (``text``), speech + features (``speech``), vocabulary, provenance.

``build(out_dir, size="ci", seed=1, ...) -> Path`` is what ``examples/speech_to_text/build_ddtp_st.py`` runs
(the layout of ``out_dir`` is in its ``--help``). It is resumable and idempotent: a finished build with
the same parameters is only verified (``provenance.is_complete``); an interrupted one skips every
utterance whose features exist; other parameters on an existing build raise ParamsMismatch.
"""
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional

from .. import atomic
from ..data_config import write_config
from ..errors import BuildError, ParamsMismatch, make_output_dir
from ..feature_store import FeatureStore
from ..manifest import write_manifest
from ..pool import map_with_progress
from ..vocab import check_vocab_size, train_spm, write_fairseq_dict
from .apt import LANGS, fetch_translations, recorded_apt_source
from .provenance import build_params, input_record, is_complete, text_sha256, write_manifest_json
from .speech import (SEEN_VOICES, TRAIN_VOICES, UNSEEN_ENGINE_VOICES, UNSEEN_VOICES, UttSpec, apt_install,
                     check_voices, espeak_version, flite_version, plan_utterances, utt_job)
from .text import ASR_EXTRA, BASE_SPLITS, SIZES, Pair, select_text

logger = logging.getLogger("build_ddtp_st")
STATE = "build_params.json"  #: the parameters the features in out_dir were made with


def build(
    out_dir,
    size: str = "ci",
    seed: int = 1,
    workers: int = 2,
    spm_vocab_size: Optional[int] = None,
    spm_type: str = "unigram",
    translations_dir: Optional[Path] = None,
    cache_dir: Optional[Path] = None,
    refresh: bool = False,
    install_deps: bool = False,
    save_audio: bool = False,
    feature_dtype: str = "float32",
    keep_npy: bool = False,
    overwrite: bool = False,
    counts: Optional[Dict[str, int]] = None,
    train_voices: str = "seen",
    unseen_engine: Optional[str] = None,
    progress: bool = True,
) -> Path:
    """Build (or finish, or verify) the corpus in ``out_dir``; returns ``out_dir`` as a Path.

    ``translations_dir`` holds ready Translation-en / Translation-de files (skips apt); otherwise they
    are fetched into ``cache_dir`` (default ``<out_dir>/apt``) once and reused. ``counts`` overrides
    the split sizes of ``size`` (e.g. ``{"train": 50}``; ``{"train_asr_extra": N}`` adds N English-only
    utterances for the ASR stage, ``text.ASR_EXTRA``). ``train_voices`` (``speech.TRAIN_VOICES``: ``seen`` or
    ``many``) names the voices of the train splits; dev/test keep the seen voices. ``unseen_engine``
    (``speech.UNSEEN_ENGINE_VOICES``: ``flite``) adds dev_unseen_engine/test_unseen_engine, the dev/test
    sentences spoken by that synthesiser (needs it installed; ``install_deps`` installs it). Re-running with the same
    arguments only does what is missing; different arguments on an existing build need ``overwrite=True``.
    """
    started = time.time()
    if size not in SIZES:
        raise BuildError(f"unknown size {size!r} (choose from {', '.join(SIZES)})")
    if train_voices not in TRAIN_VOICES:
        raise BuildError(f"unknown train_voices {train_voices!r} (choose from {', '.join(TRAIN_VOICES)})")
    if unseen_engine is not None and unseen_engine not in UNSEEN_ENGINE_VOICES:
        raise BuildError(f"unknown unseen_engine {unseen_engine!r} (choose from {', '.join(UNSEEN_ENGINE_VOICES)})")
    if spm_vocab_size is not None:
        check_vocab_size(spm_vocab_size, "--spm-vocab-size")
    out_dir = Path(out_dir)
    if translations_dir is None:  # before the download, whose cache is <out_dir>/apt by default
        make_output_dir(out_dir, BuildError)
    translations = _translations(out_dir, translations_dir, cache_dir, refresh)
    apt_source = recorded_apt_source(translations["en"].parent)  # what fetch_translations used (None: unknown)
    inputs = input_record(translations, apt_source)
    text, pools = select_text(translations, size, seed, counts)
    empty = [s for s, pairs in text.items() if not pairs]
    if empty:
        raise BuildError(f"no pairs for split(s) {', '.join(empty)} from {translations['en']} and "
                         f"{translations['de']}: Debian Translation-en/-de files with entries of the same "
                         "Description-md5 are needed")
    make_output_dir(out_dir, BuildError)
    params = build_params(size=size, seed=seed, counts=counts, feature_dtype=feature_dtype,
                          text_sha=text_sha256(text), spm_vocab_size=spm_vocab_size, spm_type=spm_type,
                          train_voices=train_voices, unseen_engine=unseen_engine)
    if not overwrite and is_complete(out_dir, params):
        logger.info("%s is complete and verified; nothing to do", out_dir)
        return out_dir

    for exe, needed in (("espeak-ng", True), ("flite", bool(unseen_engine))):
        if needed and shutil.which(exe) is None and install_deps:
            apt_install(exe)
    version = espeak_version()
    engine_voices = UNSEEN_ENGINE_VOICES[unseen_engine] if unseen_engine else ()
    check_voices(tuple(dict.fromkeys(SEEN_VOICES + TRAIN_VOICES[train_voices] + UNSEEN_VOICES + engine_voices)))
    engine_version = flite_version() if unseen_engine else None
    _claim(out_dir, params, version, overwrite, engine_version)

    plan = plan_utterances(text, seed, train_voices, unseen_engine)
    _write_text(out_dir / "text", text, plan)
    # the vocabulary before the speech: an error in it (e.g. a size too small for the text) costs no synthesis
    spm_info = _build_joint_spm(out_dir, spm_vocab_size, spm_type) if spm_vocab_size else _remove_spm_outputs(out_dir)
    splits = _speech(out_dir, plan, workers=workers, feature_dtype=feature_dtype, save_audio=save_audio,
                     keep_npy=keep_npy, progress=progress)

    outputs = [f"{s}.tsv" for s in plan] + ["fbank80.zip"]
    outputs += [f"text/{s}.{ext}" for s in BASE_SPLITS for ext in ("en", "de", "pairs.tsv")]
    outputs += [f"text/{ASR_EXTRA}.en"] if ASR_EXTRA in text else []
    if spm_info:
        outputs += _spm_outputs()
    write_manifest_json(out_dir, size=size, seed=seed, params=params, started=started, inputs=inputs,
                        apt_source=apt_source, espeak_version=version, pools=pools, splits=splits,
                        feature_dtype=feature_dtype, spm=spm_info, outputs=outputs, flite_version=engine_version)
    logger.info("built %s in %.1f s: %s", out_dir, time.time() - started, {s: v["pairs"] for s, v in splits.items()})
    return out_dir


def _translations(out_dir: Path, translations_dir: Optional[Path], cache_dir: Optional[Path],
                  refresh: bool) -> Dict[str, Path]:
    """{lang: Translation-<lang> file}: from ``translations_dir``, or fetched (and cached) by apt."""
    if translations_dir is None:
        return fetch_translations(Path(cache_dir) if cache_dir else out_dir / "apt", refresh)
    translations = {lang: Path(translations_dir) / f"Translation-{lang}" for lang in LANGS}
    for p in translations.values():
        if not p.is_file():
            raise BuildError(f"--translations-dir: {p} not found")
    return translations


def _claim(out_dir: Path, params: dict, espeak_version: str, overwrite: bool,
           flite_version: Optional[str] = None) -> None:
    """Record in ``build_params.json`` what the features in ``out_dir`` are made with (``overwrite``: after
    discarding an earlier build); features of other parameters or synthesiser versions must not mix."""
    state = out_dir / STATE
    if overwrite:
        for name in ("fbank80", "flac"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        for p in [out_dir / "fbank80.zip", out_dir / "MANIFEST.json", state]:
            p.unlink(missing_ok=True)
    feature_params = {k: v for k, v in params.items() if k != "spm"}
    feature_params["espeak_ng_version"] = espeak_version
    if flite_version:
        feature_params["flite_version"] = flite_version
    if state.is_file() and json.loads(state.read_text()) != feature_params:
        raise ParamsMismatch(
            f"{out_dir} holds a build with other parameters ({state}); use a fresh --out-dir or --overwrite"
        )
    state.write_text(json.dumps(feature_params, indent=1, ensure_ascii=False) + "\n")


def _write_text(text_dir: Path, text: Dict[str, List[Pair]], plan: Dict[str, List[UttSpec]]) -> None:
    """``text/<split>.{en,de}`` (one sentence a line) and ``text/<split>.pairs.tsv`` (ids as the manifests)."""
    text_dir.mkdir(exist_ok=True)
    for s in BASE_SPLITS:
        atomic.write_lines(text_dir / f"{s}.en", [p.en for p in text[s]])
        atomic.write_lines(text_dir / f"{s}.de", [p.de for p in text[s]])
        atomic.write_lines(
            text_dir / f"{s}.pairs.tsv",
            ["id\tpackage\tsrc_text\ttgt_text"] + [f"{u.id}\t{u.package}\t{u.src_text}\t{u.tgt_text}" for u in plan[s]],
        )
    if ASR_EXTRA in text:
        atomic.write_lines(text_dir / f"{ASR_EXTRA}.en", [p.en for p in text[ASR_EXTRA]])


def _speech(out_dir: Path, plan: Dict[str, List[UttSpec]], *, workers: int, feature_dtype: str, save_audio: bool,
            keep_npy: bool, progress: bool) -> dict:
    """Synthesise every planned utterance that has no features yet, pack ``fbank80.zip``, write the
    ``<split>.tsv`` manifests; returns MANIFEST.json ``splits`` (pairs, hours, voices per split)."""
    store = FeatureStore(out_dir)
    done = store.done()
    if save_audio:
        done &= {p.name[: -len(".flac")] for p in (out_dir / "flac").glob("*.flac")}
    specs = [u for s in plan for u in plan[s]]
    todo = [u for u in specs if u.id not in done]
    if len(todo) < len(specs):
        logger.info("features: %d of %d utterances already done, skipping them", len(specs) - len(todo), len(specs))
    import scipy.signal  # noqa: F401  (import once before the workers fork: ~1 s each otherwise)

    map_with_progress(utt_job, [(u, str(out_dir), feature_dtype, save_audio) for u in todo], workers,
                      "synthesis + fbank", progress)
    index = store.pack(keep_npy=keep_npy, progress=progress)
    stats = {}
    for s, specs_s in plan.items():
        rows = []
        for u in specs_s:
            audio, n_frames = index[u.id]
            rows.append(dict(id=u.id, audio=audio, n_frames=n_frames, tgt_text=u.tgt_text, speaker=u.voice, src_text=u.src_text))
        write_manifest(out_dir / f"{s}.tsv", rows)
        frames = sum(r["n_frames"] for r in rows)
        stats[s] = dict(pairs=len(rows), hours=round(frames / 100 / 3600, 4), voices=sorted({u.voice for u in specs_s}))
    return stats


def _spm_outputs() -> List[str]:
    """What ``_build_joint_spm`` writes and MANIFEST.json lists (relative to the corpus; also written:
    ``spm_joint.vocab``)."""
    return ["spm_joint.model", "dict.txt", "config.yaml"] + [f"text/{s}.spm.{lang}" for s in BASE_SPLITS
                                                              for lang in LANGS]


def _remove_spm_outputs(out_dir: Path) -> None:
    """A build without ``--spm-vocab-size`` in a directory that held one with it: its vocabulary, encoded text
    and config.yaml were made from the earlier build's text, which this build may have replaced; they go, so
    that no training reads a config.yaml that does not belong to the manifests beside it."""
    stale = [out_dir / n for n in _spm_outputs() + ["spm_joint.vocab"] if (out_dir / n).is_file()]
    for p in stale:
        p.unlink()
    if stale:
        logger.info("removed the earlier build's vocabulary files (%s): this build has no --spm-vocab-size",
                    ", ".join(str(p.relative_to(out_dir)) for p in stale))


def _build_joint_spm(out_dir: Path, vocab_size: int, spm_type: str) -> dict:
    """Joint en+de sentencepiece model on text/train.{en,de}, its ``dict.txt``, the encoded text
    (``text/<split>.spm.<lang>``) and ``config.yaml``; returns MANIFEST.json ``spm``."""
    import sentencepiece as spm

    text_dir = out_dir / "text"
    train = [line for lang in LANGS for line in (text_dir / f"train.{lang}").read_text(encoding="utf-8").splitlines()]
    model = train_spm(train, out_dir / "spm_joint", model_type=spm_type, vocab_size=vocab_size, flag="--spm-vocab-size")
    n = write_fairseq_dict(model, out_dir / "dict.txt")
    sp = spm.SentencePieceProcessor(model_file=str(model))
    for s in BASE_SPLITS:
        for lang in LANGS:
            lines = (text_dir / f"{s}.{lang}").read_text(encoding="utf-8").splitlines()
            atomic.write_lines(text_dir / f"{s}.spm.{lang}", [" ".join(sp.encode(line, out_type=str)) for line in lines])
    write_config(out_dir, "dict.txt", spm_model=model, cmvn="utterance", specaugment="lb", audio_root=out_dir)
    return dict(model="spm_joint.model", dict="dict.txt", type=spm_type, requested_size=vocab_size, pieces=n + 4)
