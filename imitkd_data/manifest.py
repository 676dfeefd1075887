"""fairseq speech-to-text manifests: the one reader and the one writer, reading as fairseq reads.

A manifest is a UTF-8 TSV with a header row: tab-separated, no quoting and no escapes (so no cell holds a
tab or a line break), blank lines skipped. fairseq reads it in ``SpeechToTextDatasetCreator.
_load_samples_from_tsv`` with ``csv.DictReader`` in the ``TSV_FORMAT`` below, on a file opened with
universal newlines (``\\n``, ``\\r\\n`` and ``\\r`` end a line); ``read_manifest`` and ``read_table`` do
the same, so row i here is sample i there. Standard library only.
"""
import contextlib
import csv
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence

from . import atomic
from .errors import ManifestError

#: the columns prep_s2t_data.py and build_ddtp_st.py write, in this order
MANIFEST_COLUMNS = ["id", "audio", "n_frames", "tgt_text", "speaker", "src_text"]
#: fairseq's csv format for manifests (speech_to_text_dataset.py)
TSV_FORMAT = dict(delimiter="\t", quotechar=None, doublequote=False, lineterminator="\n", quoting=csv.QUOTE_NONE)


def clean_text(text) -> str:
    """One-line text for a manifest cell: tabs/newlines become spaces, whitespace collapsed (``str(text)``)."""
    return " ".join(str(text).replace("\t", " ").replace("\r", " ").replace("\n", " ").split())


class Table(NamedTuple):
    """A manifest as lists: header, data rows (blank lines skipped) and each row's 1-based line number."""

    path: str
    header: List[str]
    rows: List[List[str]]
    line_numbers: List[int]

    def column(self, name: str) -> int:
        return self.header.index(name)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _short(text: Optional[str], limit: int = 80) -> str:
    text = "" if text is None else text
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def first_non_utf8_line(path) -> int:
    """1-based number of the first line of ``path`` that is not valid UTF-8 (0: none)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return data.count(b"\n", 0, e.start) + 1
    return 0


@contextlib.contextmanager
def _reading(path):
    """The manifest opened as fairseq opens it (UTF-8, universal newlines); read errors, and a byte-order mark
    (which fairseq reads as part of the first column's name), as ManifestError."""
    try:
        with open(path, encoding="utf-8") as f:
            if f.read(1) == "\ufeff":
                raise ManifestError(f"{path}: line 1 starts with a UTF-8 byte-order mark, which fairseq reads as part "
                                    "of the first column name; save the manifest without BOM")
            f.seek(0)
            yield f
    except UnicodeDecodeError:
        raise ManifestError(f"{path}:{first_non_utf8_line(path)}: not UTF-8; re-encode the manifest as UTF-8 "
                            "(e.g. iconv -f latin1 -t utf-8)") from None
    except (OSError, csv.Error) as e:
        raise ManifestError(f"{path}: cannot read manifest: {_one_line(e)}") from None


def read_manifest(path) -> List[Dict[str, Optional[str]]]:
    """The data rows as dicts, exactly as fairseq's reader gives them (``csv.DictReader``: a short row's
    missing cells are None, a long row's extra cells a list under the key None). Raises ManifestError
    (missing or unreadable file, not UTF-8: names the file and line; a byte-order mark); checks nothing else."""
    with _reading(path) as f:
        return [dict(row) for row in csv.DictReader(f, **TSV_FORMAT)]


def read_table(path) -> Table:
    """The manifest as lists (header, rows, line numbers), read like ``read_manifest`` (the same rows);
    for callers that keep every cell and the column order as they are. The header is [] for an empty file."""
    with _reading(path) as f:
        reader = csv.reader(f, **TSV_FORMAT)
        rows, line_numbers = [], []
        try:
            header = next(reader, None) or []
            for row in reader:
                if not row:  # blank line: csv.DictReader (fairseq) skips it too
                    continue
                rows.append(row)
                line_numbers.append(reader.line_num)
        except csv.Error as e:  # a field over csv's field_size_limit, which fairseq's reader keeps too
            raise ManifestError(f"{path}:{reader.line_num}: {_one_line(e)}; fairseq's reader cannot read it "
                                f"either") from None
    return Table(str(path), header, rows, line_numbers)


def write_table(path, header: Sequence[str], rows: Sequence[Sequence[str]], **kwargs) -> None:
    """Write cells as they are (tab-separated, ``\\n`` line ends), atomically (keyword arguments:
    ``atomic.atomic_write``, e.g. ``mode_from``). A cell with a tab or a line break, which no reader could
    split back, is refused with a ManifestError before anything is written."""
    for row in [header, *rows]:
        for cell in row:
            if "\t" in cell or "\n" in cell or "\r" in cell:
                raise ManifestError(f"{path}: refusing to write a field with a tab or line break: {_short(cell)}")
    with atomic.atomic_write(path, **kwargs) as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(row) + "\n")


def write_manifest(path, rows: Iterable[Mapping[str, object]], columns: Sequence[str] = MANIFEST_COLUMNS,
                   **kwargs) -> None:
    """Write dict rows under ``columns`` (a missing key is an empty cell), every cell through ``clean_text``;
    atomically (``write_table``)."""
    write_table(path, list(columns), [[clean_text(row.get(c, "")) for c in columns] for row in rows], **kwargs)
