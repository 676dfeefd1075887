"""The features a manifest's rows name, checked so that a bad row stops with one line naming the manifest, the
line and the id instead of a traceback mid-training (fairseq fails in the model's first convolution, or in numpy
reading the zip, naming no row).

* when a split is loaded, every row (``check_audio_cells``): the ``audio`` cell names a file that exists, and a
  ``ZIP:OFFSET:LENGTH`` cell integers whose bytes lie inside the zip (a stat per file, no reading);
* when an utterance is read, in the data-loader workers (``check_on_read``): its bytes are a .npy array (or
  audio), and its features, after the data config's transforms, are ``frames × input_feat_per_channel ·
  input_channels`` finite numbers, with about the manifest's ``n_frames`` frames (a shape check and one pass
  over the array the model reads anyway, no second read).
"""
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from fairseq.data.audio.audio_utils import (
    FEATURE_OR_SF_AUDIO_FILE_EXTENSIONS,
    get_features_or_waveform,
    is_npy_data,
    is_sf_audio_data,
    read_from_stored_zip,
)
from fairseq.data.audio.speech_to_text_dataset import SpeechToTextDataset, _is_int_or_np_int

from imitkd_data.errors import ManifestError
from imitkd_data.manifest import read_table

from .errors import ImitKDError

#: stored and real frame counts may differ up to this factor (fairseq batches and filters by the stored one)
FRAMES_TOLERANCE = 2.0
_CHECKED: Dict[tuple, List[int]] = {}  # (manifest, size, mtime, audio_root) -> line numbers of its rows


def split_audio(path: str) -> Tuple[str, Optional[List[str]]]:
    """``(file, None)`` for a .npy/.wav/.flac/.ogg path, else ``(file, [offset, length])`` as fairseq's
    ``audio_utils.parse_path`` splits ``ZIP:OFFSET:LENGTH`` (any other number of ``:`` parts is kept as it is)."""
    if Path(path).suffix in FEATURE_OR_SF_AUDIO_FILE_EXTENSIONS:
        return path, None
    file, *parts = path.split(":")
    return file, parts


def audio_problem(cell: str, path: str, sizes: Dict[str, Optional[int]]) -> Optional[str]:
    """What is wrong with the audio cell ``cell`` (resolved against the data config's audio_root: ``path``)
    that can be told without reading it, or None. ``sizes`` caches file sizes in bytes (None: no such file)."""
    file, parts = split_audio(path)
    if file not in sizes:
        sizes[file] = Path(file).stat().st_size if Path(file).is_file() else None
    if parts is not None and len(parts) != 2:
        return (f"audio '{cell}' is neither a {'/'.join(sorted(FEATURE_OR_SF_AUDIO_FILE_EXTENSIONS))} file nor "
                "ZIP:OFFSET:LENGTH")
    if sizes[file] is None:
        return f"audio '{cell}': no such file {file}"
    if parts is None:
        return None
    try:
        offset, length = int(parts[0]), int(parts[1])
    except ValueError:
        offset = length = -1
    if offset < 0 or length <= 0:
        return f"audio '{cell}': the offset and the length (bytes) must be integers >= 0 and > 0"
    if offset + length > sizes[file]:
        return (f"audio '{cell}': bytes {offset}..{offset + length} lie outside {file} ({sizes[file]} bytes); "
                "manifest and zip from different runs?")
    return None


def check_audio_cells(manifest, audio_root: str, asked: str = "") -> List[int]:
    """Check every row's audio cell of the fairseq manifest ``manifest`` (``audio_problem``; paths relative to
    ``audio_root`` as fairseq resolves them); returns the rows' line numbers (1 = the header), in fairseq's row
    order. One line naming file, line, id and cell on the first bad one; ``asked`` (e.g. ``--train-subset
    train``) says who asked. Reads each manifest once per process (unless it changes)."""
    path = Path(manifest)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(audio_root))
    if key not in _CHECKED:
        try:
            table = read_table(path)
        except ManifestError as e:
            raise ImitKDError(str(e)) from None
        ids, audio, sizes = table.column("id"), table.column("audio"), {}
        for row, line in zip(table.rows, table.line_numbers):
            problem = audio_problem(row[audio], (Path(audio_root) / row[audio]).as_posix(), sizes)
            if problem:
                raise ImitKDError(f"{path}: line {line} (id={row[ids]}): {problem}{f' ({asked})' if asked else ''}")
        _CHECKED[key] = table.line_numbers
    return _CHECKED[key]


class CheckedSpeechToTextDataset(SpeechToTextDataset):
    """fairseq's dataset whose ``_get_source_audio`` names the manifest row of features it cannot read or that
    the model cannot take (``ImitKDError``). Made by ``check_on_read`` from a loaded dataset (fairseq's
    ``SpeechToTextDatasetCreator`` builds the plain class), which sets ``manifest``, ``line_numbers``,
    ``feature_width`` (None: raw audio, not checked) and ``config_name``."""

    def _get_source_audio(self, index):
        rows = [int(index)] if _is_int_or_np_int(index) else [int(i) for i in index]  # a list: ConcatAugment
        try:
            source = super()._get_source_audio(index)
        except (OSError, ValueError, RuntimeError, IndexError, EOFError, AssertionError) as e:
            raise ImitKDError(f"{self._where(rows)}: {self._read_problem(rows, e)}") from None
        problem = self._feature_problem(source, sum(self.n_frames[i] for i in rows))
        if problem:
            raise ImitKDError(f"{self._where(rows)}: {problem}")
        return source

    def _where(self, rows: List[int]) -> str:
        return f"{self.manifest}: " + ", ".join(
            f"line {self.line_numbers[i]} (id={self.ids[i] if self.ids else i}, audio {self.audio_paths[i]})"
            for i in rows)

    def _read_problem(self, rows: List[int], error: BaseException) -> str:
        """Why reading ``rows`` failed with ``error`` (on this error path only, their bytes are read again)."""
        reason = " ".join(str(error).split()) or type(error).__name__
        for i in rows:
            path = self.audio_paths[i]
            file, parts = split_audio(path)
            if not Path(file).is_file():  # (every cell was checked at load: removed since)
                return f"cannot read its features ({reason})"
            bytes_ = f"bytes {parts[0]}..{int(parts[0]) + int(parts[1])} of {file}" if parts is not None else ""
            if parts is not None:
                data = read_from_stored_zip(file, int(parts[0]), int(parts[1]))
                if not (len(data) >= 4 and (is_npy_data(data) or is_sf_audio_data(data))):
                    return (f"{bytes_} are not a .npy array (they start with {bytes(data[:8])!r}); is the offset "
                            "off? (prep_s2t_data.py writes the cells)")
            try:
                raw = get_features_or_waveform(path, need_waveform=self.cfg.use_audio_input)
            except (OSError, ValueError, RuntimeError, IndexError, EOFError, AssertionError) as e:
                detail = " ".join(str(e).split()) or type(e).__name__
                if parts is None:
                    return f"cannot read its features ({detail})"
                return (f"{bytes_} are not a whole .npy array ({detail}); is the length off? (prep_s2t_data.py writes "
                        "the cells)")
            if self.feature_width is not None and raw.ndim != 2:  # the transforms failed on it
                return self._shape_problem(raw.shape)
        return f"cannot read its features ({reason})"

    def _shape_problem(self, shape) -> str:
        return (f"features of shape {tuple(shape)}, but the data config {self.config_name} says input_feat_per_channel "
                f"{self.cfg.input_feat_per_channel} × input_channels {self.cfg.input_channels} = {self.feature_width} "
                "per frame")

    def _feature_problem(self, source: torch.Tensor, n_frames: int) -> Optional[str]:
        """What keeps the model from reading ``source`` (frames × features after the transforms), or None."""
        width = self.feature_width
        if width is None:
            return None
        if source.dim() != 2 or source.size(1) != width:
            return self._shape_problem(source.shape)
        frames = source.size(0)
        if frames * FRAMES_TOLERANCE < n_frames or frames > n_frames * FRAMES_TOLERANCE:
            return (f"{frames} feature frames, but its n_frames says {n_frames}; fairseq batches (--max-tokens) and "
                    "filters (--max-source-positions) by n_frames: write the utterance's frame count")
        if not np.isfinite(source.numpy()).all():  # (numpy: a tenth of torch.isfinite's time on a CPU tensor)
            return "features hold NaN or infinite values; recompute them (prep_s2t_data.py)"
        return None


def check_on_read(dataset, manifest, line_numbers: List[int], config_name: str) -> None:
    """Make the loaded fairseq dataset ``dataset`` (of the manifest ``manifest``, whose rows are on
    ``line_numbers``) a ``CheckedSpeechToTextDataset``: the same object and state, checked per item. Other
    dataset classes (fairseq's multitask one) are left as they are."""
    if type(dataset) is not SpeechToTextDataset or len(line_numbers) != len(dataset):
        return
    cfg = dataset.cfg
    dataset.__class__ = CheckedSpeechToTextDataset
    dataset.manifest, dataset.line_numbers, dataset.config_name = str(manifest), line_numbers, config_name
    dataset.feature_width = None if cfg.use_audio_input else cfg.input_feat_per_channel * cfg.input_channels
