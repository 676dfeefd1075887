"""Text inputs in the batch, read from manifest columns and encoded in the data loader.

``TextInputDataset`` wraps fairseq's ``SpeechToTextDataset`` and, per item, encodes one or more
text columns (in ``__getitem__``, i.e. in the data-loader workers). In the collated batch, in the
batch's row order:

* ``sample["expert_input"] = {"src_tokens": B×S long, "src_lengths": B long}`` — the transcript the
  text expert reads (student inputs stay exactly fairseq's);
* ``sample["ctc_input"]`` (same layout) — the transcript an auxiliary CTC loss reads (``--ctc-weight``);
* for a *text* student (the cascade's NMT part), ``sample["net_input"]["src_tokens"/"src_lengths"]``
  are replaced by the encoded ASR transcript.
"""
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from fairseq.data import BaseWrapperDataset, ConcatDataset
from fairseq.data import data_utils
from fairseq.data.audio.speech_to_text_dataset import SpeechToTextDataset

from imitkd_data.errors import ManifestError
from imitkd_data.manifest import read_manifest

from .errors import ImitKDError

EXPERT_INPUT, STUDENT_INPUT, CTC_INPUT = "expert_input", "net_input", "ctc_input"


def read_text_columns(root: str, splits: str, columns: List[Tuple[str, str]]) -> Dict[str, List[str]]:
    """``{column: texts}`` for each ``(column, needed_by)`` of the manifests ``<root>/<split>.tsv``
    (comma-separated splits, concatenated in order, as fairseq concatenates them), reading each manifest
    once. Fails on a missing column or an empty cell, naming file, row and ``needed_by``."""
    texts = {column: [] for column, _ in columns}
    for split in splits.split(","):
        path = Path(root) / f"{split}.tsv"
        check_manifest(path)
        try:
            rows = read_manifest(path)  # the rows fairseq's SpeechToTextDatasetCreator reads, in its order
        except ManifestError as e:
            raise ImitKDError(str(e)) from None
        for column, needed_by in columns:
            if column not in rows[0]:
                raise ImitKDError(f"{path}: no '{column}' column (columns: {', '.join(rows[0])}); {needed_by} reads it")
            for i, row in enumerate(rows):
                if row[column] is None or not row[column].strip():
                    raise ImitKDError(f"{path}: row {i + 2} (id={row.get('id')}) has an empty '{column}'; "
                                      f"{needed_by} reads it")
        for column in texts:
            texts[column].extend(row[column] for row in rows)
    return texts


#: the columns fairseq's ``SpeechToTextDatasetCreator`` reads from every manifest
REQUIRED_COLUMNS = ("id", "audio", "n_frames", "tgt_text")
_CHECKED = set()  # (path, size, mtime) of manifests already checked in this process


def check_manifest(path, split_flag: str = "") -> None:
    """Fail with one line if the fairseq manifest ``path`` is missing, not UTF-8, lacks a column of
    ``REQUIRED_COLUMNS``, has no data row, a row whose number of tab-separated fields differs from the
    header's, or an ``n_frames`` that is not a positive integer.

    fairseq's reader (``SpeechToTextDatasetCreator._load_samples_from_tsv``; ``imitkd_data.manifest`` reads
    the same way) would end in a traceback that names no file (``UnicodeDecodeError``) or no flag; this
    names the file, the line (1 = the header) and the row's id. ``split_flag`` (e.g. ``--train-subset
    train``) says who asked for it. Checks each file once per process (unless it changes)."""
    path = Path(path)
    asked = f" ({split_flag})" if split_flag else ""
    if not path.is_file():
        raise ImitKDError(f"{path}: manifest not found{asked}")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _CHECKED:
        return
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        raise ImitKDError(f"{path}: line 1 starts with a UTF-8 byte-order mark, which fairseq reads as part of the "
                          f"first column name{asked}; save the manifest without BOM")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        start = data.rfind(b"\n", 0, e.start) + 1
        end = data.find(b"\n", e.start)
        row = data[start:end if end >= 0 else len(data)]
        line = data.count(b"\n", 0, start) + 1
        header = data[:data.find(b"\n")].decode("utf-8", errors="replace").split("\t")
        field = row[:e.start - start].count(b"\t")
        row_id = row.split(b"\t", 1)[0].decode("utf-8", errors="replace")
        where = "the header" if line == 1 else f"id={row_id}"
        column = f" in column '{header[field]}'" if line > 1 and field < len(header) else ""
        raise ImitKDError(f"{path}: line {line} ({where}) is not UTF-8: byte 0x{data[e.start]:02x}{column}{asked}; "
                          "re-encode the manifest as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    lines = data.splitlines()  # \n, \r\n or \r: the lines fairseq's reader (universal newlines) sees
    header = lines[0].decode("utf-8").split("\t") if lines else []
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if lines and missing:
        raise ImitKDError(f"{path}: line 1 (the header) lacks the column(s) {', '.join(missing)} that fairseq's "
                          f"speech_to_text reads (columns: {', '.join(header)}){asked}")
    n_fields = len(header)
    frames_at = header.index("n_frames") if "n_frames" in header else None
    n_rows = 0
    for n, line in enumerate(lines[1:], 2):
        if not line:  # fairseq's reader skips empty lines
            continue
        n_rows += 1
        fields = line.split(b"\t")
        row_id = fields[0].decode("utf-8")
        if len(fields) != n_fields:
            raise ImitKDError(f"{path}: line {n} (id={row_id}) has {len(fields)} tab-separated fields, "
                              f"the header has {n_fields}{asked}; a tab inside a text, or a cell missing?")
        frames = fields[frames_at].decode("utf-8").strip()
        if not (frames.isascii() and frames.isdigit() and int(frames) > 0):
            raise ImitKDError(f"{path}: line {n} (id={row_id}) has n_frames '{frames}'{asked}; it must be the "
                              "utterance's number of feature frames, a positive integer")
    if not n_rows:
        raise ImitKDError(f"{path}: {'no data rows, only a header' if data.strip() else 'empty file'}{asked}")
    _CHECKED.add(key)


def _n_items(dataset) -> int:
    parts = dataset.datasets if isinstance(dataset, ConcatDataset) else [dataset]
    if all(isinstance(d, SpeechToTextDataset) for d in parts):
        return len(dataset)
    raise ImitKDError(
        f"{type(dataset).__name__}: text inputs work with plain or concatenated speech_to_text manifests "
        "(set sampling_alpha to 1.0 in the data config)")


class TextInputDataset(BaseWrapperDataset):
    """Adds encoded text columns to every item and batch.

    Args:
        dataset: a ``SpeechToTextDataset`` (or a concatenation of them).
        inputs: ``{EXPERT_INPUT or STUDENT_INPUT: (texts, encoder)}``; ``texts`` has one string per
            item in dataset order, ``encoder`` is an ``imitkd.text_encoding.SourceEncoder``.
    """

    def __init__(self, dataset, inputs: Dict[str, Tuple[List[str], object]]):
        super().__init__(dataset)
        n = _n_items(dataset)
        for key, (texts, _) in inputs.items():
            if len(texts) != n:
                raise ImitKDError(f"{len(texts)} texts for {key} but {n} manifest rows")
        self.inputs = inputs

    def __getitem__(self, index):
        return self.dataset[index], {key: enc.encode(texts[index]) for key, (texts, enc) in self.inputs.items()}

    def collater(self, samples):
        if len(samples) == 0:
            return {}
        batch = self.dataset.collater([item for item, _ in samples], return_order=True)
        order = batch.pop("order").tolist()
        for key, (_, encoder) in self.inputs.items():
            tokens = [samples[i][1][key] for i in order]
            collated = {
                "src_tokens": data_utils.collate_tokens(tokens, encoder.dictionary.pad(), encoder.dictionary.eos()),
                "src_lengths": torch.tensor([t.numel() for t in tokens], dtype=torch.long),
            }
            batch[key] = {**batch.get(key, {}), **collated}
        return batch
