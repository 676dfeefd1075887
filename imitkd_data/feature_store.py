"""Per-utterance features as ``fbank80/<id>.npy``, packed into an uncompressed ``fbank80.zip`` for fairseq.

fairseq's manifests address a feature matrix inside the zip as ``audio = fbank80.zip:<offset>:<length>``
(byte offset and length of the member's data, as ``examples/speech_to_text/data_utils.py`` writes it).
Extraction is resumable: ids that already have features, in the folder or the zip, are skipped.
"""
import struct
import zipfile
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from .atomic import atomic_write
from .errors import DataPrepError

FEATURE_NAME = "fbank80"


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
        """Atomically write the features ``(n_frames, n_bins)`` of one utterance; returns n_frames."""
        self.dir.mkdir(parents=True, exist_ok=True)
        # thousands of scratch files in one folder, packed into the zip later: no fsync, no sweep
        with atomic_write(self.npy_path(utt_id), binary=True, fsync=False, sweep=False) as f:
            np.save(f, np.ascontiguousarray(feats, dtype=dtype))
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
            try:
                with atomic_write(self.zip_path, binary=True) as f, \
                        zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                    for utt_id in tqdm(names, desc=f"packing {self.zip_path.name}", disable=not progress, leave=False):
                        data = self.npy_path(utt_id).read_bytes() if utt_id in folder else old.read(f"{utt_id}.npy")
                        info = zipfile.ZipInfo(f"{utt_id}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                        info.external_attr = 0o644 << 16
                        zf.writestr(info, data, compress_type=zipfile.ZIP_STORED)
            finally:
                if old is not None:
                    old.close()
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
