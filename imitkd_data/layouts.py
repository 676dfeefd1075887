"""Input layouts of prep_s2t_data.py: MuST-C, CoVoST 2 and a generic TSV, read into ``Utterance`` lists.

``READERS[layout](root, split, src_lang, tgt_lang) -> List[Utterance]``; every error about the input
(missing file, line-count mismatch, empty text, missing column) is a DataPrepError naming the file and row.
The layouts themselves are described in ``examples/speech_to_text/prep_s2t_data.py --help``.
"""
import math
import re
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .errors import DataPrepError, yaml_error
from .features import read_audio
from .manifest import clean_text, first_non_utf8_line, read_manifest

AUDIO_EXTENSIONS = (".wav", ".flac")
#: a MuST-C segment may end this far (seconds) past the end of its wav and is cut at the end (rounding of
#: offset/duration in the yaml: at most one 10 ms frame); a segment reaching further is an error
SEGMENT_END_TOLERANCE = 0.01
DEFAULT_SPLITS = {"mustc": ["train", "dev", "tst-COMMON"], "covost": ["train", "dev", "test"], "tsv": ["train", "dev", "test"]}


@dataclass
class Utterance:
    """One utterance of an input layout: its audio (a whole file, or a segment of one) and its texts."""

    id: str
    audio: str  # path to a wav/flac/mp3 file
    src_text: str
    tgt_text: str
    speaker: str = ""
    offset: Optional[float] = None  # seconds; segment of a longer file (MuST-C)
    duration: Optional[float] = None
    where: str = ""  # "file:line" of the input row, for error messages


def load_manifest(path: Path) -> List[Dict[str, str]]:
    """An input layout's TSV, read as fairseq reads manifests (``manifest.read_manifest``); a row with more or
    fewer tab-separated fields than the header (a tab inside a text, a cell missing) is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataPrepError(f"manifest not found: {path}")
    rows = read_manifest(path)
    for line_no, r in enumerate(rows, start=2):
        if None in r or None in r.values():  # csv.DictReader: extra cells under the key None, missing ones None
            n = sum(v is not None for k, v in r.items() if k is not None) + len(r.get(None) or [])
            raise DataPrepError(f"{path}:{line_no}: {n} tab-separated fields, the header has {len(r) - (None in r)}; "
                                "a tab inside a text, or a cell missing?")
    return rows


def _read_lines(path: Path) -> List[str]:
    if not path.is_file():
        raise DataPrepError(f"text file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n").rstrip("\r") for line in f]
    except UnicodeDecodeError:
        raise DataPrepError(f"{path}:{first_non_utf8_line(path)}: not UTF-8; re-encode it as UTF-8 "
                            "(e.g. iconv -f latin1 -t utf-8)") from None


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


def _mustc_base(root: Path, split: str, src_lang: str, tgt_lang: str) -> Path:
    base = root / f"{src_lang}-{tgt_lang}" / "data" / split
    if not base.is_dir() and (root / "data" / split).is_dir():
        base = root / "data" / split
    return base


def read_mustc(root: Path, split: str, src_lang: str = "en", tgt_lang: str = "de") -> List[Utterance]:
    import yaml

    root = Path(root)
    base = _mustc_base(root, split, src_lang, tgt_lang)
    yaml_path = base / "txt" / f"{split}.yaml"
    if not yaml_path.is_file():
        raise DataPrepError(f"MuST-C segment list not found: {yaml_path}")
    try:
        with open(yaml_path, encoding="utf-8") as f:
            segments = yaml.load(f, Loader=getattr(yaml, "CBaseLoader", yaml.BaseLoader))
    except UnicodeDecodeError:
        raise DataPrepError(f"{yaml_path}:{first_non_utf8_line(yaml_path)}: not UTF-8; re-encode it as UTF-8") from None
    except yaml.YAMLError as e:
        raise DataPrepError(yaml_error(yaml_path, e)) from None
    if not isinstance(segments, list):
        raise DataPrepError(f"{yaml_path}: expected a list of segments")
    if not segments:
        raise DataPrepError(f"{yaml_path}: no segments")
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
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DataPrepError(f"{where}: bad segment entry ({e!r})")
        offset, duration = rows[-1][1:3]
        if not (math.isfinite(offset) and offset >= 0 and math.isfinite(duration) and duration > 0):
            raise DataPrepError(f"{where}: offset {seg['offset']} / duration {seg['duration']}: the offset must be "
                                ">= 0 and the duration > 0 (seconds)")
    utts = []
    # ids as fairseq: group consecutive segments of one wav, sort by offset, number them
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


def _covost_tables(root: Path, split: str, src_lang: str, tgt_lang: str) -> List[Path]:
    return [root / f"covost_v2.{src_lang}_{tgt_lang}.{split}.tsv", root / f"{split}.tsv"]


def read_covost(root: Path, split: str, src_lang: str = "en", tgt_lang: str = "de") -> List[Utterance]:
    root = Path(root)
    candidates = _covost_tables(root, split, src_lang, tgt_lang)
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
        cv_rows = load_manifest(validated)
        _require_columns(validated, cv_rows, ["path"] + [c for c in ("sentence", "client_id") if c not in rows[0]])
        cv = {r["path"]: r for r in cv_rows}
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


def input_files(layout: str, root: Path, splits: Sequence[str], src_lang: str = "en", tgt_lang: str = "de") -> List[Path]:
    """The text files (tables, segment lists, transcripts) ``READERS[layout]`` may read for ``splits``, existing
    or not: prep_s2t_data.py must not write over any of them."""
    root = Path(root)
    if layout == "mustc":
        return [_mustc_base(root, s, src_lang, tgt_lang) / "txt" / f"{s}.{ext}"
                for s in splits for ext in ("yaml", src_lang, tgt_lang)]
    if layout == "covost":
        return [p for s in splits for p in _covost_tables(root, s, src_lang, tgt_lang)] + [
            root / f"covost_v2.{src_lang}_{tgt_lang}.tsv", root / "validated.tsv"]
    return [root / f"{s}.tsv" for s in splits]


def check_ids(utts: Iterable[Utterance]):
    seen = {}
    for u in utts:
        if not u.id or u.id.startswith(".") or re.search(r"[/\\\s\x00]", u.id):
            raise DataPrepError(f"{u.where}: utterance id {u.id!r} cannot be used as a file name")
        if u.id in seen:
            raise DataPrepError(f"{u.where}: duplicate utterance id {u.id!r} (also at {seen[u.id]})")
        seen[u.id] = u.where


def _finite(utt: Utterance, wav: np.ndarray) -> np.ndarray:
    if not np.isfinite(wav).all():  # a float wav/flac may hold them; the fbank would be NaN
        raise DataPrepError(f"{utt.where}: audio {utt.audio} has NaN or infinite samples")
    return wav


def load_waveform(utt: Utterance) -> Tuple[np.ndarray, int]:
    """Mono float32 waveform of an utterance (the segment only, for MuST-C)."""
    import soundfile as sf

    try:
        if utt.offset is None:
            wav, sr = read_audio(utt.audio)
            return _finite(utt, wav), sr
        info = sf.info(utt.audio)
        start = int(round(utt.offset * info.samplerate))
        frames = int(round(utt.duration * info.samplerate))
        if start >= info.frames:
            raise DataPrepError(f"{utt.where}: offset {utt.offset}s is beyond the end of {utt.audio} ({info.duration:.2f}s)")
        if start + frames > info.frames + SEGMENT_END_TOLERANCE * info.samplerate:
            raise DataPrepError(f"{utt.where}: offset {utt.offset}s + duration {utt.duration}s ends past the end "
                                f"of {utt.audio} ({info.frames / info.samplerate:.3f}s)")
        wav, sr = sf.read(utt.audio, start=start, frames=frames, dtype="float32", always_2d=True)
        return _finite(utt, wav.mean(axis=1)), sr
    except DataPrepError:
        raise
    except Exception as e:  # soundfile.LibsndfileError, RuntimeError, ...
        hint = ""
        if utt.audio.lower().endswith(".mp3") and "MP3" not in sf.available_formats():
            hint = " (this libsndfile cannot decode mp3: convert the clips to wav/flac)"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataPrepError(f"{utt.where}: cannot read audio {utt.audio}: {msg}{hint}")
