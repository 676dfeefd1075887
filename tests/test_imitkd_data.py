"""imitkd_data: the fairseq-free data package (manifest reader/writer, atomic writes, fbank).

Its import must not pull in torch or fairseq (the data-prep scripts start fast and patch nothing), its
manifest reader must give exactly the rows fairseq's reader gives, and its writes must be all or nothing.
"""
import os
import pkgutil
import subprocess
import sys

import numpy as np
import pytest

import imitkd_data
from imitkd_data import atomic
from imitkd_data.errors import ManifestError
from imitkd_data.manifest import MANIFEST_COLUMNS, clean_text, read_manifest, read_table, write_manifest, write_table


def test_import_pulls_in_neither_torch_nor_fairseq():
    """Every module of the package, imported in a fresh interpreter: no torch, fairseq or imitkd (the plugin
    patches fairseq on import)."""
    names = [m.name for m in pkgutil.walk_packages(imitkd_data.__path__, "imitkd_data.")]
    assert {"imitkd_data.manifest", "imitkd_data.atomic", "imitkd_data.features", "imitkd_data.ddtp.corpus"} <= set(names)
    code = ("import importlib, sys\n"
            f"for name in {names!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in ('torch', 'torchaudio', 'fairseq', 'imitkd') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_plugin_reexports_the_same_fbank():
    import imitkd.features
    from imitkd_data import features

    assert imitkd.features.fbank_from_file is features.fbank_from_file
    assert imitkd.features.kaldi_fbank is features.kaldi_fbank and imitkd.features.SAMPLE_RATE == 16000
    wav = np.sin(np.arange(8000) / 7.0).astype(np.float32)
    assert features.compute_fbank(wav, 16000).shape == (48, 80)


# --------------------------------------------------------------------------------- manifest reader
TRICKY = (b"id\taudio\tn_frames\ttgt_text\tspeaker\tsrc_text\r\n"
          b"a\tx.zip:1:2\t5\tein \"Zitat\" 'hier'\tspk\tsome \"quoted\" text\r\n"
          b"\n"                                   # blank line: skipped
          b"b\tx.zip:3:4\t6\tkurz\n"               # short row: missing cells are None
          b"c\tx.zip:5:6\t7\tlang\tspk\tsrc\textra\n"  # long row: extra cells under None
          b"d\tx.zip:7:8\t8\tzwei\rzeilen\tspk\tsrc\n"  # a lone CR ends a line (universal newlines)
          + "e\t\t9\täö\tspk\t  spaced  \n".encode())


def test_reader_gives_the_rows_fairseq_reads(tmp_path):
    from fairseq.data.audio.speech_to_text_dataset import SpeechToTextDatasetCreator

    (tmp_path / "train.tsv").write_bytes(TRICKY)
    fairseq_rows = SpeechToTextDatasetCreator._load_samples_from_tsv(str(tmp_path), "train")
    rows = read_manifest(tmp_path / "train.tsv")
    assert rows == fairseq_rows
    assert [r["id"] for r in rows] == ["a", "b", "c", "d", "zeilen", "e"]
    assert rows[1]["speaker"] is None and rows[2][None] == ["extra"] and rows[5]["src_text"] == "  spaced  "

    table = read_table(tmp_path / "train.tsv")
    assert table.header == list(fairseq_rows[0])[:6]
    assert [r[0] for r in table.rows] == [r["id"] for r in rows]
    assert table.line_numbers == [2, 4, 5, 6, 7, 8]  # line 3 is blank; the CR starts line 7
    assert table.rows[5][table.column("src_text")] == "  spaced  "


def test_reader_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "latin1.tsv"
    bad.write_bytes(b"id\tsrc_text\nu1\tok\nu2\tcaf\xe9\n")
    with pytest.raises(ManifestError, match=rf"^{bad}:3: not UTF-8; re-encode the manifest as UTF-8"):
        read_manifest(bad)
    with pytest.raises(ManifestError, match=rf"^{bad}:3: not UTF-8"):
        read_table(bad)
    with pytest.raises(ManifestError, match=r"absent\.tsv: cannot read manifest: .*No such file"):
        read_manifest(tmp_path / "absent.tsv")
    (tmp_path / "empty.tsv").write_text("")
    assert read_table(tmp_path / "empty.tsv").header == [] and read_manifest(tmp_path / "empty.tsv") == []


# --------------------------------------------------------------------------------- manifest writer
def test_write_manifest_round_trip(tmp_path):
    rows = [dict(id="u1", audio="f.zip:1:2", n_frames=5, tgt_text="ein\ttab\nund  zeile", speaker="", src_text=" a  b "),
            dict(id="u2", audio="f.zip:3:4", n_frames=7, tgt_text="x", src_text="y")]  # no speaker key: empty cell
    path = tmp_path / "m.tsv"
    write_manifest(path, rows)
    assert path.read_bytes() == (b"id\taudio\tn_frames\ttgt_text\tspeaker\tsrc_text\n"
                                 b"u1\tf.zip:1:2\t5\tein tab und zeile\t\ta b\n"
                                 b"u2\tf.zip:3:4\t7\tx\t\ty\n")
    back = read_manifest(path)
    assert list(back[0]) == MANIFEST_COLUMNS and back[0]["tgt_text"] == clean_text(rows[0]["tgt_text"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_write_table_keeps_cells_and_refuses_a_tab(tmp_path):
    path = tmp_path / "t.tsv"
    write_table(path, ["id", "txt"], [["a", "  two  spaces "]])
    assert path.read_text() == "id\ttxt\na\t  two  spaces \n"
    with pytest.raises(ManifestError, match=r"t\.tsv: refusing to write a field with a tab or line break: 'x\\ty'"):
        write_table(path, ["id", "txt"], [["b", "x\ty"]])
    assert path.read_text() == "id\ttxt\na\t  two  spaces \n"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.tsv"]


# --------------------------------------------------------------------------------- atomic writes
def test_atomic_write_is_all_or_nothing(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old\n")
    os.chmod(path, 0o640)
    with pytest.raises(RuntimeError):
        with atomic.atomic_write(path) as f:
            f.write("half")
            assert len(list(tmp_path.glob(".out.txt.*.tmp"))) == 1
            raise RuntimeError("disk full")
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_write(path, binary=True) as f:
            f.write(b"half")
            raise KeyboardInterrupt
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    atomic.write_lines(path, ["a", "b"])
    assert path.read_text() == "a\nb\n" and (path.stat().st_mode & 0o777) == 0o640  # the replaced file's mode
    new = tmp_path / "new.txt"
    atomic.write_text(new, "x", mode_from=path)
    assert (new.stat().st_mode & 0o777) == 0o640


def test_atomic_write_sweeps_temporary_files_of_dead_processes(tmp_path):
    path = tmp_path / "out.tsv"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    host = atomic._host()
    stale = tmp_path / f".out.tsv.{host}-{pid}.abcd1234.tmp"
    alive = tmp_path / f".out.tsv.{host}-{os.getpid()}.ffff0000.tmp"
    other = tmp_path / f".other.tsv.{host}-{pid}.abcd1234.tmp"
    for p in (stale, alive, other):
        p.write_text("left over\n")
    heard = []
    atomic.write_text(path, "new\n", log=heard.append)
    assert heard == [f"warning: removed {stale}, left by process {pid} (killed?)"]
    assert not stale.exists() and alive.exists() and other.exists() and path.read_text() == "new\n"
    atomic.write_text(tmp_path / "x.npy", "", sweep=False, fsync=False)
    assert (tmp_path / "x.npy").read_text() == ""
