#!/usr/bin/env python3
"""Prepare speech-translation data in fairseq's speech_to_text format (80-dim fbank, zip, TSV, spm, config).

Input layouts (``--layout``)
----------------------------
``mustc``  MuST-C as distributed::

    <root>/en-<lang>/data/<split>/wav/<talk>.wav
    <root>/en-<lang>/data/<split>/txt/<split>.yaml     # list of {duration, offset, rw, speaker_id, wav}
    <root>/en-<lang>/data/<split>/txt/<split>.en       # one transcript per yaml segment
    <root>/en-<lang>/data/<split>/txt/<split>.<lang>   # one translation per yaml segment

  ``--data-root`` may also point at ``<root>/en-<lang>`` itself. Segments are cut from the talk
  wav by offset/duration (seconds). Ids are ``<talk>_<i>`` with i counting the segments of a talk
  in offset order (as fairseq's prep_mustc_data.py does). Default splits: train dev tst-COMMON.

``covost`` CoVoST 2 as users have it::

    <root>/clips/<path>                                 # Common Voice clips (.mp3 | .wav | .flac)
    <root>/covost_v2.<src>_<tgt>.<split>.tsv            # or the fairseq-style <root>/<split>.tsv
                                                        # or <root>/covost_v2.<src>_<tgt>.tsv with a `split` column
    columns: path, sentence, translation, client_id     # (sentence/client_id may come from <root>/validated.tsv)

  If ``clips/<path>`` is missing but a .wav/.flac with the same stem exists (converted clips), that
  file is used. mp3 is read through soundfile (libsndfile >= 1.1 reads MPEG audio); if the installed
  libsndfile cannot, the run stops naming the file. Ids are the clip file stems; speaker = client_id.

``tsv``    a generic manifest ``<root>/<split>.tsv`` (tab separated, header row) with columns
  ``id, audio, src_text, tgt_text[, speaker]``; ``audio`` is a wav/flac path, absolute or relative
  to ``<root>``.

Output (``--out-dir``)
----------------------
* ``fbank80.zip``: one ``<id>.npy`` (float32, shape (n_frames, 80)) per utterance, ZIP_STORED.
  Features come from ``imitkd.features.kaldi_fbank`` (kaldi-native-fbank; identical to the on-the-fly
  features of the imitkd raw-audio path), computed at one sample rate: every file is first resampled
  to ``--sample-rate`` (default 16000; ``scipy.signal.resample_poly``, as build_ddtp_st.py and the
  raw-audio path do), so a 22.05 kHz and a 16 kHz recording of one utterance give the same features.
* ``<split>.tsv``: columns ``id, audio, n_frames, tgt_text, speaker, src_text``; ``audio`` is
  ``fbank80.zip:<byte offset>:<byte length>`` (offset of the member's data, as fairseq's
  ``examples/speech_to_text/data_utils.py`` writes it). Tabs/newlines in texts become spaces.
* ``spm_<type><size>.model`` + fairseq dictionary ``spm_<type><size>.txt`` trained on the targets of
  the train split(s) (``--vocab-type``, ``--vocab-size``); or the reused ``--vocab-from-dict`` /
  ``--bpe-from`` files (copied into the output dir, so a student shares the expert's vocabulary).
* ``config.yaml`` for ``fairseq-train --config-yaml``: input_channels 1, input_feat_per_channel 80,
  vocab_filename, bpe_tokenizer (absolute sentencepiece_model path), audio_root (absolute output dir,
  so manifests work from any working directory), sample_rate (``--sample-rate``), optional ``--cmvn utterance`` and
  ``--specaugment lb|ld|sm|ss`` (fairseq's standard policies; implies utterance CMVN).

Resuming
--------
Features are first written as ``fbank80/<id>.npy`` and packed into the zip at the end; utterances
whose features already exist (as a .npy in ``fbank80/`` or a member of ``fbank80.zip``) are never
recomputed, so an interrupted run can simply be started again. Without ``--keep-npy`` the .npy files
are removed once they are safely in the zip. Use ``--overwrite`` to recompute everything. Resuming
with another ``--sample-rate`` than the one config.yaml records is refused (the features would mix rates).

Errors about the input (missing/unreadable audio, text line-count mismatch, empty transcript or
translation, missing columns) are reported as one line naming the file/row, with exit status 2.

Example::

    python examples/speech_to_text/prep_s2t_data.py --layout mustc --data-root MUSTC --tgt-lang de \\
        --out-dir data/mustc_en_de --vocab-type unigram --vocab-size 8000 --specaugment lb --workers 2
"""
import argparse
import csv
import logging
import multiprocessing
import os
import re
import shutil
import struct
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def _import_features():
    """``imitkd.features`` (kaldi_fbank, read_audio, resample, SAMPLE_RATE) without importing the ``imitkd`` package.

    The package ``__init__`` imports fairseq and registers tasks (seconds of start-up, and it may be
    mid-edit); the features module itself only needs numpy, kaldi-native-fbank and soundfile, so it is
    loaded from its file. Falls back to the installed package when the file is not next to this script.
    """
    path = REPO_ROOT / "imitkd" / "features.py"
    if path.is_file():
        import importlib.util

        spec = importlib.util.spec_from_file_location("_imitkd_features", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.kaldi_fbank, mod.read_audio, mod.resample, mod.SAMPLE_RATE
    from imitkd.features import SAMPLE_RATE, kaldi_fbank, read_audio, resample

    return kaldi_fbank, read_audio, resample, SAMPLE_RATE


kaldi_fbank, read_audio, resample, SAMPLE_RATE = _import_features()

logger = logging.getLogger("prep_s2t_data")

N_MEL_BINS = 80
FEATURE_NAME = "fbank80"
MANIFEST_COLUMNS = ["id", "audio", "n_frames", "tgt_text", "speaker", "src_text"]
AUDIO_EXTENSIONS = (".wav", ".flac")
DEFAULT_SPLITS = {"mustc": ["train", "dev", "tst-COMMON"], "covost": ["train", "dev", "test"], "tsv": ["train", "dev", "test"]}
# fairseq's S2TDataConfigWriter policies (examples/speech_to_text/data_utils.py)
SPECAUGMENT_POLICIES = {
    "lb": dict(time_warp_W=0, freq_mask_N=1, freq_mask_F=27, time_mask_N=1, time_mask_T=100, time_mask_p=1.0),
    "ld": dict(time_warp_W=0, freq_mask_N=2, freq_mask_F=27, time_mask_N=2, time_mask_T=100, time_mask_p=1.0),
    "sm": dict(time_warp_W=0, freq_mask_N=2, freq_mask_F=15, time_mask_N=2, time_mask_T=70, time_mask_p=0.2),
    "ss": dict(time_warp_W=0, freq_mask_N=2, freq_mask_F=27, time_mask_N=2, time_mask_T=70, time_mask_p=0.2),
}
# fairseq's special symbols: bos, pad, eos, unk at ids 0..3
SPECIAL_PIECES = ("<s>", "<pad>", "</s>", "<unk>")


class DataPrepError(Exception):
    """A problem with the input data; the CLI prints it as one line and exits with status 2."""


@dataclass
class Utterance:
    id: str
    audio: str  # path to a wav/flac/mp3 file
    src_text: str
    tgt_text: str
    speaker: str = ""
    offset: Optional[float] = None  # seconds; segment of a longer file (MuST-C)
    duration: Optional[float] = None
    where: str = ""  # "file:line" of the input row, for error messages


def clean_text(text: str) -> str:
    """One-line text for a QUOTE_NONE TSV: tabs/newlines become spaces, whitespace collapsed."""
    return " ".join(str(text).replace("\t", " ").replace("\r", " ").replace("\n", " ").split())


# --------------------------------------------------------------------------- input layouts
def _read_lines(path: Path) -> List[str]:
    if not path.is_file():
        raise DataPrepError(f"text file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").rstrip("\r") for line in f]


def _require_columns(path: Path, rows: List[Dict[str, str]], columns: Sequence[str]):
    if not rows:
        raise DataPrepError(f"{path}: no data rows")
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise DataPrepError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(rows[0])})")


def _check_text(text: Optional[str], what: str, where: str) -> str:
    text = clean_text(text or "")
    if not text:
        raise DataPrepError(f"{where}: empty {what}")
    return text


def read_mustc(root: Path, split: str, src_lang: str = "en", tgt_lang: str = "de") -> List[Utterance]:
    import yaml

    root = Path(root)
    base = root / f"{src_lang}-{tgt_lang}" / "data" / split
    if not base.is_dir() and (root / "data" / split).is_dir():
        base = root / "data" / split
    yaml_path = base / "txt" / f"{split}.yaml"
    if not yaml_path.is_file():
        raise DataPrepError(f"MuST-C segment list not found: {yaml_path}")
    with open(yaml_path, encoding="utf-8") as f:
        segments = yaml.load(f, Loader=getattr(yaml, "CBaseLoader", yaml.BaseLoader))
    if not isinstance(segments, list):
        raise DataPrepError(f"{yaml_path}: expected a list of segments")
    texts = {}
    for lang in (src_lang, tgt_lang):
        path = base / "txt" / f"{split}.{lang}"
        texts[lang] = _read_lines(path)
        if len(texts[lang]) != len(segments):
            raise DataPrepError(
                f"line count mismatch: {path} has {len(texts[lang])} lines but {yaml_path} lists {len(segments)} segments"
            )
    rows = []
    for i, seg in enumerate(segments):
        where = f"{yaml_path}: segment {i + 1}"
        try:
            rows.append((seg["wav"], float(seg["offset"]), float(seg["duration"]), seg.get("speaker_id", ""), i, where))
        except (KeyError, TypeError, ValueError) as e:
            raise DataPrepError(f"{where}: bad segment entry ({e!r})")
    utts = []
    # ids as fairseq: group consecutive segments of one wav, sort by offset, number them
    from itertools import groupby

    for wav_name, group in groupby(rows, key=lambda r: r[0]):
        wav_path = base / "wav" / wav_name
        group = sorted(group, key=lambda r: r[1])
        if not wav_path.is_file():
            raise DataPrepError(f"{group[0][5]}: audio file not found: {wav_path}")
        for j, (_, offset, duration, speaker, i, where) in enumerate(group):
            src_where = f"{base / 'txt' / f'{split}.{src_lang}'}:{i + 1}"
            tgt_where = f"{base / 'txt' / f'{split}.{tgt_lang}'}:{i + 1}"
            utts.append(
                Utterance(
                    id=f"{Path(wav_name).stem}_{j}",
                    audio=str(wav_path),
                    src_text=_check_text(texts[src_lang][i], "transcript", src_where),
                    tgt_text=_check_text(texts[tgt_lang][i], "translation", tgt_where),
                    speaker=clean_text(speaker),
                    offset=offset,
                    duration=duration,
                    where=where,
                )
            )
    return utts


def _resolve_clip(clips: Path, name: str) -> Optional[Path]:
    path = clips / name
    if path.is_file():
        return path
    for ext in AUDIO_EXTENSIONS:  # clips converted to wav/flac keep their stem
        alt = path.with_suffix(ext)
        if alt.is_file():
            return alt
    return None


def read_covost(root: Path, split: str, src_lang: str = "en", tgt_lang: str = "de") -> List[Utterance]:
    root = Path(root)
    candidates = [root / f"covost_v2.{src_lang}_{tgt_lang}.{split}.tsv", root / f"{split}.tsv"]
    path = next((p for p in candidates if p.is_file()), None)
    rows = None
    if path is None:
        full = root / f"covost_v2.{src_lang}_{tgt_lang}.tsv"
        if not full.is_file():
            raise DataPrepError(f"CoVoST manifest for split {split!r} not found: tried {', '.join(map(str, candidates + [full]))}")
        path = full
        rows = load_manifest(path)
        _require_columns(path, rows, ["path", "translation", "split"])
        rows = [r for r in rows if r["split"] == split]
        if not rows:
            raise DataPrepError(f"{path}: no rows with split == {split!r}")
    else:
        rows = load_manifest(path)
    _require_columns(path, rows, ["path", "translation"])
    if "sentence" not in rows[0] or "client_id" not in rows[0]:
        validated = root / "validated.tsv"  # Common Voice's own manifest holds sentence and client_id
        if not validated.is_file():
            raise DataPrepError(f"{path}: missing column(s) sentence/client_id and no {validated} to take them from")
        cv = {r["path"]: r for r in load_manifest(validated)}
        for r in rows:
            extra = cv.get(r["path"], {})
            r.setdefault("sentence", extra.get("sentence", ""))
            r.setdefault("client_id", extra.get("client_id", ""))
    clips = root / "clips"
    utts = []
    for line_no, r in enumerate(rows, start=2):
        where = f"{path}:{line_no}"
        audio = _resolve_clip(clips, r["path"])
        if audio is None:
            raise DataPrepError(f"{where}: audio file not found: {clips / r['path']}")
        utts.append(
            Utterance(
                id=Path(r["path"]).stem,
                audio=str(audio),
                src_text=_check_text(r.get("sentence"), "transcript (sentence)", where),
                tgt_text=_check_text(r.get("translation"), "translation", where),
                speaker=clean_text(r.get("client_id") or ""),
                where=where,
            )
        )
    return utts


def read_tsv_layout(root: Path, split: str, src_lang: str = "en", tgt_lang: str = "de") -> List[Utterance]:
    root = Path(root)
    path = root / f"{split}.tsv"
    rows = load_manifest(path)
    _require_columns(path, rows, ["id", "audio", "src_text", "tgt_text"])
    utts = []
    for line_no, r in enumerate(rows, start=2):
        where = f"{path}:{line_no}"
        audio = Path(r["audio"] or "")
        if not audio.is_absolute():
            audio = root / audio
        if not r["audio"] or not audio.is_file():
            raise DataPrepError(f"{where}: audio file not found: {audio}")
        utts.append(
            Utterance(
                id=clean_text(r["id"]),
                audio=str(audio),
                src_text=_check_text(r.get("src_text"), "transcript (src_text)", where),
                tgt_text=_check_text(r.get("tgt_text"), "translation (tgt_text)", where),
                speaker=clean_text(r.get("speaker") or ""),
                where=where,
            )
        )
    return utts


READERS = {"mustc": read_mustc, "covost": read_covost, "tsv": read_tsv_layout}


def check_ids(utts: Iterable[Utterance]):
    seen = {}
    for u in utts:
        if not u.id or u.id.startswith(".") or re.search(r"[/\\\s\x00]", u.id):
            raise DataPrepError(f"{u.where}: utterance id {u.id!r} cannot be used as a file name")
        if u.id in seen:
            raise DataPrepError(f"{u.where}: duplicate utterance id {u.id!r} (also at {seen[u.id]})")
        seen[u.id] = u.where


# --------------------------------------------------------------------------- features
def compute_fbank(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """80-dim Kaldi fbank of a float waveform in [-1, 1] (scaled to int16 range as fairseq does)."""
    return kaldi_fbank(np.asarray(waveform, dtype=np.float32) * 32768.0, sample_rate, N_MEL_BINS)


def load_waveform(utt: Utterance) -> Tuple[np.ndarray, int]:
    """Mono float32 waveform of an utterance (the segment only, for MuST-C)."""
    import soundfile as sf

    try:
        if utt.offset is None:
            return read_audio(utt.audio)
        info = sf.info(utt.audio)
        start = int(round(utt.offset * info.samplerate))
        frames = int(round(utt.duration * info.samplerate))
        if start >= info.frames:
            raise DataPrepError(f"{utt.where}: offset {utt.offset}s is beyond the end of {utt.audio} ({info.duration:.2f}s)")
        wav, sr = sf.read(utt.audio, start=start, frames=frames, dtype="float32", always_2d=True)
        return wav.mean(axis=1), sr
    except DataPrepError:
        raise
    except Exception as e:  # soundfile.LibsndfileError, RuntimeError, ...
        hint = ""
        if utt.audio.lower().endswith(".mp3") and "MP3" not in sf.available_formats():
            hint = " (this libsndfile cannot decode mp3: convert the clips to wav/flac)"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataPrepError(f"{utt.where}: cannot read audio {utt.audio}: {msg}{hint}")


class FeatureStore:
    """Per-utterance ``<name>/<id>.npy`` files, packed into an uncompressed ``<name>.zip``.

    ``done()`` tells which ids already have features (in the folder or the zip), so extraction is
    resumable; ``pack()`` (re)builds the zip deterministically (sorted members, fixed timestamps) and
    returns fairseq ``audio`` column values ``<name>.zip:<data offset>:<length>`` and frame counts.
    """

    def __init__(self, out_dir: Path, name: str = FEATURE_NAME):
        self.out_dir = Path(out_dir)
        self.dir = self.out_dir / name
        self.zip_path = self.out_dir / f"{name}.zip"

    def npy_path(self, utt_id: str) -> Path:
        return self.dir / f"{utt_id}.npy"

    def save(self, utt_id: str, feats: np.ndarray, dtype: str = "float32") -> int:
        """Atomically write the features of one utterance; returns n_frames."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{utt_id}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(feats, dtype=dtype))
        os.replace(tmp, self.npy_path(utt_id))
        return int(feats.shape[0])

    def zip_members(self) -> List[str]:
        if not self.zip_path.is_file():
            return []
        with zipfile.ZipFile(self.zip_path) as zf:
            return [i.filename[: -len(".npy")] for i in zf.infolist() if i.filename.endswith(".npy")]

    def folder_ids(self) -> List[str]:
        if not self.dir.is_dir():
            return []
        return [p.name[: -len(".npy")] for p in self.dir.glob("*.npy")]

    def done(self) -> set:
        return set(self.folder_ids()) | set(self.zip_members())

    def _needs_pack(self) -> bool:
        folder = self.folder_ids()
        if not folder:
            return False
        if not self.zip_path.is_file():
            return True
        in_zip = set(self.zip_members())
        zip_mtime = self.zip_path.stat().st_mtime
        return any(i not in in_zip or self.npy_path(i).stat().st_mtime > zip_mtime for i in folder)

    def pack(self, keep_npy: bool = False, progress: bool = True) -> Dict[str, Tuple[str, int]]:
        """Merge the folder's .npy files into the zip; returns id -> (audio column, n_frames)."""
        from tqdm import tqdm

        if self._needs_pack():
            folder = set(self.folder_ids())
            old = zipfile.ZipFile(self.zip_path) if self.zip_path.is_file() else None
            names = sorted(folder | (set(self.zip_members()) if old else set()))
            tmp = self.zip_path.with_name(self.zip_path.name + ".tmp")
            try:
                with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                    for utt_id in tqdm(names, desc=f"packing {self.zip_path.name}", disable=not progress, leave=False):
                        data = self.npy_path(utt_id).read_bytes() if utt_id in folder else old.read(f"{utt_id}.npy")
                        info = zipfile.ZipInfo(f"{utt_id}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                        info.external_attr = 0o644 << 16
                        zf.writestr(info, data, compress_type=zipfile.ZIP_STORED)
            finally:
                if old is not None:
                    old.close()
            os.replace(tmp, self.zip_path)
        if not keep_npy:
            for utt_id in self.folder_ids():
                self.npy_path(utt_id).unlink()
            if self.dir.is_dir() and not any(self.dir.iterdir()):
                self.dir.rmdir()
        return zip_manifest(self.zip_path)


def _npy_n_frames(fp) -> int:
    version = np.lib.format.read_magic(fp)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, _ = read_header(fp)
    return int(shape[0])


def zip_manifest(zip_path: Path) -> Dict[str, Tuple[str, int]]:
    """id -> (``<zip name>:<offset>:<length>``, n_frames) for every .npy member of a stored zip.

    The offset is that of the member's data: local header offset + 30 + file name length + extra
    length, read from the local header itself (fairseq's get_zip_manifest assumes an empty extra).
    """
    zip_path = Path(zip_path)
    out = {}
    with zipfile.ZipFile(zip_path) as zf, open(zip_path, "rb") as f:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            if info.compress_type != zipfile.ZIP_STORED:
                raise DataPrepError(f"{zip_path}: member {info.filename} is compressed; fairseq needs ZIP_STORED")
            f.seek(info.header_offset)
            header = f.read(30)
            if header[:4] != b"PK\x03\x04":
                raise DataPrepError(f"{zip_path}: bad local header for {info.filename}")
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            offset = info.header_offset + 30 + name_len + extra_len
            f.seek(offset)
            n_frames = _npy_n_frames(f)
            out[info.filename[: -len(".npy")]] = (f"{zip_path.name}:{offset}:{info.file_size}", n_frames)
    return out


def _extract_job(args):
    utt, out_dir, dtype, sample_rate = args
    wav, sr = resample(*load_waveform(utt), sample_rate)
    feats = compute_fbank(wav, sr)
    if feats.shape[0] == 0:
        raise DataPrepError(f"{utt.where}: audio {utt.audio} is too short for one 25 ms frame")
    return utt.id, FeatureStore(out_dir).save(utt.id, feats, dtype)


def map_with_progress(fn, jobs: list, workers: int, desc: str, progress: bool = True, chunksize: int = 4):
    """``[fn(j) for j in jobs]`` on a process pool (fork) with a tqdm bar; in-process if workers <= 1."""
    from tqdm import tqdm

    bar = dict(total=len(jobs), desc=desc, disable=not progress, unit="utt", smoothing=0.05)
    if workers <= 1 or len(jobs) <= 1:
        return [fn(j) for j in tqdm(jobs, **bar)]
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    with ctx.Pool(workers) as pool:
        return list(tqdm(pool.imap(fn, jobs, chunksize=chunksize), **bar))


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


# --------------------------------------------------------------------------- manifests
def write_manifest(path: Path, rows: Iterable[Dict[str, object]], columns: Sequence[str] = MANIFEST_COLUMNS):
    """TSV readable by fairseq's csv.DictReader(delimiter='\\t', quoting=QUOTE_NONE): no quoting at all."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(columns) + "\n")
        for row in rows:
            f.write("\t".join(clean_text(row.get(c, "")) for c in columns) + "\n")
    os.replace(tmp, path)


def load_manifest(path: Path) -> List[Dict[str, str]]:
    """Read a TSV (ours or an input layout's) exactly as fairseq's
    SpeechToTextDatasetCreator._load_samples_from_tsv does (tab, no quoting)."""
    path = Path(path)
    if not path.is_file():
        raise DataPrepError(f"manifest not found: {path}")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quotechar=None, doublequote=False, quoting=csv.QUOTE_NONE)
        return [dict(r) for r in reader]


def manifest_rows(utts: Sequence[Utterance], zip_index: Dict[str, Tuple[str, int]]) -> List[Dict[str, object]]:
    rows = []
    for u in utts:
        audio, n_frames = zip_index[u.id]
        rows.append(dict(id=u.id, audio=audio, n_frames=n_frames, tgt_text=u.tgt_text, speaker=u.speaker, src_text=u.src_text))
    return rows


# --------------------------------------------------------------------------- vocabulary
def train_spm(texts: Iterable[str], model_prefix: Path, model_type: str = "unigram", vocab_size: int = 8000) -> Path:
    """Train sentencepiece with fairseq's special ids (bos 0, pad 1, eos 2, unk 3); returns the .model path."""
    import sentencepiece as spm

    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    # a fixed input path (the model records it), so that the same text gives a byte-identical model
    inp = model_prefix.with_name(model_prefix.name + ".input.txt")
    try:
        n = 0
        with open(inp, "w", encoding="utf-8") as f:
            for t in texts:
                t = clean_text(t)
                if t:
                    f.write(t + "\n")
                    n += 1
        if n == 0:
            raise DataPrepError("no text to train the sentencepiece model on")
        spm.SentencePieceTrainer.train(
            input=str(inp),
            model_prefix=str(model_prefix),
            model_type=model_type,
            vocab_size=vocab_size,
            character_coverage=1.0,
            num_threads=1,  # deterministic
            bos_id=0,
            pad_id=1,
            eos_id=2,
            unk_id=3,
            hard_vocab_limit=False,  # small corpora: a smaller vocabulary instead of an error
            minloglevel=2,
        )
    finally:
        inp.unlink(missing_ok=True)
    return model_prefix.with_suffix(".model")


def write_fairseq_dict(spm_model: Path, dict_path: Path) -> int:
    """fairseq dictionary of a sentencepiece model: every piece but ids 0-3 as ``<piece> 1``; returns #pieces."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    if tuple(pieces[:4]) != SPECIAL_PIECES:
        raise DataPrepError(f"{spm_model}: ids 0-3 are {pieces[:4]}, expected {list(SPECIAL_PIECES)} (fairseq convention)")
    with open(dict_path, "w", encoding="utf-8") as f:
        for piece in pieces[4:]:
            f.write(f"{piece} 1\n")
    return len(pieces) - 4


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
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f, sort_keys=False, allow_unicode=True)
    return path


def setup_vocab(
    out_dir: Path,
    train_targets: Sequence[str],
    vocab_type: str = "unigram",
    vocab_size: int = 8000,
    vocab_from_dict: Optional[Path] = None,
    bpe_from: Optional[Path] = None,
) -> Tuple[str, Optional[Path]]:
    """Train (or copy in) the target vocabulary; returns (vocab_filename relative to out_dir, spm model path)."""
    out_dir = Path(out_dir)
    spm_model = None
    if bpe_from is not None:
        bpe_from = Path(bpe_from)
        if not bpe_from.is_file():
            raise DataPrepError(f"--bpe-from: sentencepiece model not found: {bpe_from}")
        spm_model = out_dir / bpe_from.name
        if bpe_from.resolve() != spm_model.resolve():
            shutil.copyfile(bpe_from, spm_model)
    if vocab_from_dict is not None:
        vocab_from_dict = Path(vocab_from_dict)
        if not vocab_from_dict.is_file():
            raise DataPrepError(f"--vocab-from-dict: dictionary not found: {vocab_from_dict}")
        dict_path = out_dir / vocab_from_dict.name
        if vocab_from_dict.resolve() != dict_path.resolve():
            shutil.copyfile(vocab_from_dict, dict_path)
        if spm_model is None:
            logger.warning("--vocab-from-dict without --bpe-from: config.yaml gets no bpe_tokenizer (targets used as is)")
        return dict_path.name, spm_model
    if spm_model is None:
        if not train_targets:
            raise DataPrepError("no train split to learn the vocabulary from (name one with --vocab-splits or reuse one)")
        spm_model = train_spm(train_targets, out_dir / f"spm_{vocab_type}{vocab_size}", vocab_type, vocab_size)
    dict_path = spm_model.with_suffix(".txt")
    write_fairseq_dict(spm_model, dict_path)
    return dict_path.name, spm_model


# --------------------------------------------------------------------------- driver
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
    Every file is resampled to ``sample_rate`` before its features are computed."""
    if layout not in READERS:
        raise DataPrepError(f"unknown layout {layout!r} (choose from {', '.join(READERS)})")
    data_root, out_dir = Path(data_root), Path(out_dir)
    if not data_root.is_dir():
        raise DataPrepError(f"data root not found: {data_root}")
    splits = list(splits or DEFAULT_SPLITS[layout])
    out_dir.mkdir(parents=True, exist_ok=True)
    if layout == "tsv" and data_root.resolve() == out_dir.resolve():
        raise DataPrepError("--out-dir must differ from --data-root for the tsv layout (the manifests would be overwritten)")
    if not isinstance(sample_rate, int) or sample_rate < 1000:
        raise DataPrepError(f"--sample-rate must be an integer of at least 1000 (Hz), got {sample_rate!r}")
    store = FeatureStore(out_dir)
    if overwrite:
        shutil.rmtree(store.dir, ignore_errors=True)
        store.zip_path.unlink(missing_ok=True)
    elif store.done():
        _check_resumed_rate(out_dir / "config.yaml", sample_rate)

    by_split = {s: READERS[layout](data_root, s, src_lang, tgt_lang) for s in splits}
    all_utts = [u for s in splits for u in by_split[s]]
    check_ids(all_utts)
    computed = extract_features(all_utts, out_dir, workers, feature_dtype, progress, sample_rate)
    index = store.pack(keep_npy=keep_npy, progress=progress)
    for s in splits:
        write_manifest(out_dir / f"{s}.tsv", manifest_rows(by_split[s], index))

    vocab_splits = list(vocab_splits) if vocab_splits else [s for s in splits if s.startswith("train")]
    unknown = [s for s in vocab_splits if s not in by_split]
    if unknown:
        raise DataPrepError(f"--vocab-splits {' '.join(unknown)} not among the prepared splits {' '.join(splits)}")
    train_targets = [u.tgt_text for s in vocab_splits for u in by_split[s]]
    vocab_filename, spm_model = setup_vocab(out_dir, train_targets, vocab_type, vocab_size, vocab_from_dict, bpe_from)
    config = write_config(out_dir, vocab_filename, spm_model, cmvn, specaugment, audio_root=out_dir,
                          sample_rate=sample_rate)
    return {
        "splits": {s: len(by_split[s]) for s in splits},
        "computed": computed,
        "zip": str(store.zip_path),
        "vocab": str(out_dir / vocab_filename),
        "spm_model": str(spm_model) if spm_model else None,
        "config": str(config),
        "sample_rate": sample_rate,
    }


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


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--layout", required=True, choices=sorted(READERS), help="input layout (see below)")
    p.add_argument("--data-root", required=True, type=Path, help="root of the input data")
    p.add_argument("--out-dir", required=True, type=Path, help="output directory (fairseq data dir)")
    p.add_argument("--splits", nargs="+", help="splits to prepare (default: mustc: train dev tst-COMMON; others: train dev test)")
    p.add_argument("--src-lang", default="en", help="source (speech) language code (default: en)")
    p.add_argument("--tgt-lang", default="de", help="target language code (default: de)")
    p.add_argument("--vocab-type", default="unigram", choices=["unigram", "bpe", "char"], help="sentencepiece model type")
    p.add_argument("--vocab-size", default=8000, type=int, help="sentencepiece vocabulary size (default 8000)")
    p.add_argument("--vocab-splits", nargs="+", help="splits whose targets train the vocabulary (default: those named train*)")
    p.add_argument("--vocab-from-dict", type=Path, help="reuse this fairseq dictionary (e.g. the expert's target dict)")
    p.add_argument("--bpe-from", type=Path, help="reuse this sentencepiece model (e.g. the expert's)")
    p.add_argument("--cmvn", choices=["utterance"], help="utterance-level CMVN on all splits")
    p.add_argument("--specaugment", choices=sorted(SPECAUGMENT_POLICIES), help="SpecAugment policy for train (implies --cmvn utterance)")
    p.add_argument("--workers", default=1, type=int, help="feature-extraction processes (default 1)")
    p.add_argument("--feature-dtype", default="float32", choices=["float32", "float16"], help="dtype of stored features")
    p.add_argument("--sample-rate", default=SAMPLE_RATE, type=int, metavar="HZ",
                   help=f"resample every file to this rate before computing features (default {SAMPLE_RATE}; "
                        "recorded as sample_rate in config.yaml)")
    p.add_argument("--keep-npy", action="store_true", help="keep fbank80/<id>.npy after packing the zip")
    p.add_argument("--overwrite", action="store_true", help="recompute all features")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = prepare(
            args.layout, args.data_root, args.out_dir, args.splits, args.src_lang, args.tgt_lang, args.vocab_type,
            args.vocab_size, args.vocab_splits, args.vocab_from_dict, args.bpe_from, args.cmvn, args.specaugment,
            args.workers, args.feature_dtype, args.keep_npy, args.overwrite, progress=not args.no_progress,
            sample_rate=args.sample_rate,
        )
    except DataPrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logger.info("done: %s", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
