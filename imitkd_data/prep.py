"""prep_s2t_data.py's driver: input layout -> fbank80.zip, ``<split>.tsv`` manifests, vocabulary, config.yaml.

``prepare(layout, data_root, out_dir, ...)`` reads the splits (``layouts``), extracts the features of the
utterances that have none yet (``feature_store``; every file resampled to ``sample_rate`` first), packs
them, writes the manifests (``manifest``), the vocabulary (``vocab``) and the data config (``data_config``).
"""
import logging
import os
import shutil
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from .data_config import write_config
from .errors import DataPrepError, make_output_dir
from .feature_store import FEATURE_NAME, FeatureStore
from .features import SAMPLE_RATE, compute_fbank, resample
from .layouts import DEFAULT_SPLITS, READERS, Utterance, check_ids, input_files, load_waveform
from .manifest import write_manifest
from .pool import map_with_progress
from .vocab import check_spm_model, check_vocab_size, setup_vocab

logger = logging.getLogger("prep_s2t_data")


def _extract_job(args):
    utt, out_dir, dtype, sample_rate = args
    wav, sr = resample(*load_waveform(utt), sample_rate)
    feats = compute_fbank(wav, sr)
    if feats.shape[0] == 0:
        raise DataPrepError(f"{utt.where}: audio {utt.audio} is too short for one 25 ms frame")
    return utt.id, FeatureStore(out_dir).save(utt.id, feats, dtype)


def extract_features(
    utts: Sequence[Utterance], out_dir: Path, workers: int = 1, dtype: str = "float32", progress: bool = True,
    sample_rate: int = SAMPLE_RATE,
) -> int:
    """Compute and save fbank features for the utterances that have none yet, from their audio resampled
    to ``sample_rate``; returns how many were computed."""
    store = FeatureStore(out_dir)
    done = store.done()
    todo = [u for u in utts if u.id not in done]
    if len(todo) < len(utts):
        logger.info("features: %d of %d utterances already extracted, skipping them", len(utts) - len(todo), len(utts))
    map_with_progress(_extract_job, [(u, str(out_dir), dtype, sample_rate) for u in todo], workers, "fbank", progress)
    return len(todo)


def manifest_rows(utts: Sequence[Utterance], zip_index: Dict[str, Tuple[str, int]]) -> list:
    """Manifest rows (``manifest.MANIFEST_COLUMNS``) of ``utts``; ``zip_index``: ``FeatureStore.pack()``."""
    rows = []
    for u in utts:
        audio, n_frames = zip_index[u.id]
        rows.append(dict(id=u.id, audio=audio, n_frames=n_frames, tgt_text=u.tgt_text, speaker=u.speaker, src_text=u.src_text))
    return rows


def prepare(
    layout: str,
    data_root: Path,
    out_dir: Path,
    splits: Optional[Sequence[str]] = None,
    src_lang: str = "en",
    tgt_lang: str = "de",
    vocab_type: str = "unigram",
    vocab_size: int = 8000,
    vocab_splits: Optional[Sequence[str]] = None,
    vocab_from_dict: Optional[Path] = None,
    bpe_from: Optional[Path] = None,
    cmvn: Optional[str] = None,
    specaugment: Optional[str] = None,
    workers: int = 1,
    feature_dtype: str = "float32",
    keep_npy: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    sample_rate: int = SAMPLE_RATE,
) -> Dict[str, object]:
    """Run the whole preparation; returns a summary dict (utterance counts, computed features, paths).
    Every file is resampled to ``sample_rate`` (Hz) before its features are computed."""
    if layout not in READERS:
        raise DataPrepError(f"unknown layout {layout!r} (choose from {', '.join(READERS)})")
    data_root, out_dir = Path(data_root), Path(out_dir)
    if not data_root.is_dir():
        raise DataPrepError(f"data root not found: {data_root}")
    splits = list(splits or DEFAULT_SPLITS[layout])
    # argument errors first: nothing is created or written before them
    if not isinstance(sample_rate, int) or sample_rate < 1000:
        raise DataPrepError(f"--sample-rate must be an integer of at least 1000 (Hz), got {sample_rate!r}")
    if not isinstance(workers, int) or workers < 1:
        raise DataPrepError(f"--workers must be an integer >= 1, got {workers!r}")
    vocab_splits = list(vocab_splits) if vocab_splits else [s for s in splits if s.startswith("train")]
    unknown = [s for s in vocab_splits if s not in splits]
    if unknown:
        raise DataPrepError(f"--vocab-splits {' '.join(unknown)} not among the prepared splits {' '.join(splits)}")
    if bpe_from is not None:
        check_spm_model(bpe_from, "--bpe-from")
    if vocab_from_dict is not None and not Path(vocab_from_dict).is_file():
        raise DataPrepError(f"--vocab-from-dict: dictionary not found: {vocab_from_dict}")
    if bpe_from is None and vocab_from_dict is None:
        check_vocab_size(vocab_size, "--vocab-size")
    written = [f"{s}.tsv" for s in splits] + ["config.yaml", f"{FEATURE_NAME}.zip"]
    written += [f"spm_{vocab_type}{vocab_size}{ext}" for ext in (".model", ".txt", ".vocab")]
    _check_not_inputs(out_dir, written, input_files(layout, data_root, splits, src_lang, tgt_lang))
    make_output_dir(out_dir)
    store = FeatureStore(out_dir)
    if overwrite:
        shutil.rmtree(store.dir, ignore_errors=True)
        store.zip_path.unlink(missing_ok=True)
    elif store.done():
        _check_resumed_rate(out_dir / "config.yaml", sample_rate)

    by_split = {s: READERS[layout](data_root, s, src_lang, tgt_lang) for s in splits}
    all_utts = [u for s in splits for u in by_split[s]]
    check_ids(all_utts)
    # the vocabulary before the features: an error in it (e.g. a size too small for the text) costs no extraction
    train_targets = [u.tgt_text for s in vocab_splits for u in by_split[s]]
    vocab_filename, spm_model = setup_vocab(out_dir, train_targets, vocab_type=vocab_type, vocab_size=vocab_size,
                                            vocab_from_dict=vocab_from_dict, bpe_from=bpe_from)
    computed = extract_features(all_utts, out_dir, workers=workers, dtype=feature_dtype, progress=progress,
                                sample_rate=sample_rate)
    index = store.pack(keep_npy=keep_npy, progress=progress)
    for s in splits:
        write_manifest(out_dir / f"{s}.tsv", manifest_rows(by_split[s], index))
    config = write_config(out_dir, vocab_filename, spm_model=spm_model, cmvn=cmvn, specaugment=specaugment,
                          audio_root=out_dir, sample_rate=sample_rate)
    return {
        "splits": {s: len(by_split[s]) for s in splits},
        "computed": computed,
        "zip": str(store.zip_path),
        "vocab": str(out_dir / vocab_filename),
        "spm_model": str(spm_model) if spm_model else None,
        "config": str(config),
        "sample_rate": sample_rate,
    }


def _check_not_inputs(out_dir: Path, names: Sequence[str], inputs: Sequence[Path]) -> None:
    """None of the files ``names`` to be written in ``out_dir`` is one of the layout's ``inputs`` (e.g. the
    covost/tsv ``<split>.tsv`` when --out-dir is --data-root): they would be overwritten."""
    inputs = [p for p in inputs if p.is_file()]
    for name in names:
        out = out_dir / name
        hit = next((p for p in inputs if out.is_file() and os.path.samefile(out, p)), None)
        if hit is not None:
            raise DataPrepError(f"--out-dir {out_dir}: writing {name} there would overwrite the input file {hit}; "
                                "choose another --out-dir (it must differ from --data-root)")


def _check_resumed_rate(config: Path, sample_rate: int) -> None:
    """Features of an earlier run in the output dir are reused: they must be of the same rate."""
    import yaml

    if not config.is_file():
        return
    try:
        earlier = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("sample_rate")
    except (yaml.YAMLError, AttributeError, UnicodeDecodeError):
        earlier = None
    if earlier is None:
        logger.warning("%s records no sample_rate: reusing its features as if computed at %d Hz", config, sample_rate)
    elif int(earlier) != sample_rate:
        raise DataPrepError(f"--sample-rate {sample_rate}: the features in {config.parent} were computed at {earlier} Hz "
                            f"({config}); use --sample-rate {earlier}, another --out-dir or --overwrite")
