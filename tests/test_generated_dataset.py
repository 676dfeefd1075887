"""Tests of examples/imitkd/create_wmt19_generated_dataset.py on REAL fairseq-generate logs.

A session fixture trains a tiny fairseq transformer (seconds on a CPU) on a synthetic parallel
corpus (a-tokens -> reversed b-tokens, some of them split into BPE pieces ``b@@ <k>``) and decodes

* ``expert.log``: the test split (source: the transcripts, reference: the BPE'd translations), the
  stand-in for the NMT expert's log (``-o``);
* ``asr.log``: the same rows, but the source is the transcript with shifted tokens and the reference is the
  transcript itself, the stand-in for an ASR model decoded on an ASR manifest (``-a``).

The manifest has the test rows in order, its columns in a non-standard order plus an extra one.
fairseq-generate prints samples in length-sorted batch order, so only joining by id can pass.
"""
import csv
import importlib.util
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import toydata

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "imitkd" / "create_wmt19_generated_dataset.py"
VENV_BIN = Path(sys.executable).parent
HEADER = ["id", "speaker", "audio", "src_text", "n_frames", "extra", "tgt_text"]
N_TEST = 12

_spec = importlib.util.spec_from_file_location("create_wmt19_generated_dataset", SCRIPT)
gd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gd)


# ----------------------------------------------------------------------------------- helpers
def _fairseq(tool, *args, stdout=None):
    exe = VENV_BIN / tool
    if not exe.exists():
        exe = shutil.which(tool)
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    if tool == "fairseq-generate":  # two of them run side by side
        env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen([str(exe), *map(str, args)], env=env, stdout=stdout or subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait(proc, what):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"{what} failed:\n{(err or '')[-4000:]}"
    return out


def _translate(words):
    """a-sentence -> reversed, mapped b-sentence; even digits become two BPE pieces 'b@@ <k>'."""
    out = []
    for w in reversed(words):
        k = int(w[1:])
        out += ["b@@", str(k)] if k % 2 == 0 else [f"b{k}"]
    return " ".join(out)


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def read_tsv(path):
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quotechar=None, quoting=csv.QUOTE_NONE))
    return rows[0], rows[1:]


def write_tsv(path, header, rows):
    path.write_text("".join("\t".join(r) + "\n" for r in [header, *rows]))
    return path


def log_lines(path, kind):
    """{id: text} of the kind ('H', 'D', 'T') lines, parsed independently of the script, plus
    the ids in the order the log prints them."""
    texts, order = {}, []
    for line in Path(path).read_text().splitlines():
        if line.startswith(kind + "-"):
            fields = line.split("\t")
            i = int(fields[0][2:])
            texts[i] = fields[-1] if kind in "HD" else fields[1]
            order.append(i)
    return texts, order


def run_main(capsys, *argv):
    """Runs the script in-process; returns (status, stdout, stderr)."""
    status = gd.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(err, *needles):
    """stderr is exactly one line 'create_wmt19_generated_dataset.py: error: ...' with all needles."""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{gd.PROG}: error: "), err
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------------- fixture
@pytest.fixture(scope="session")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("generated_dataset")
    rng = random.Random(1)

    def sentences(n):
        return [[f"a{rng.randrange(10)}" for _ in range(rng.randint(2, 7))] for _ in range(n)]

    train, test = sentences(60), sentences(N_TEST)
    _write_lines(root / "train.src", [" ".join(s) for s in train])
    _write_lines(root / "train.tgt", [_translate(s) for s in train])
    _write_lines(root / "test.src", [" ".join(s) for s in test])
    _write_lines(root / "test.tgt", [_translate(s) for s in test])
    # "ASR" split (valid): other input than the expert's, the transcript as reference
    _write_lines(root / "valid.src", [" ".join(f"a{(int(w[1:]) + 5) % 10}" for w in s) for s in test])
    _write_lines(root / "valid.tgt", [" ".join(s) for s in test])

    _wait(_fairseq("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt",
                   "--trainpref", root / "train", "--validpref", root / "valid", "--testpref", root / "test",
                   "--destdir", root / "bin", "--workers", "1", "--joined-dictionary"), "fairseq-preprocess")
    _wait(_fairseq("fairseq-train", root / "bin", "--arch", "transformer", "--encoder-layers", "1",
                   "--decoder-layers", "1", "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
                   "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
                   "--encoder-attention-heads", "2", "--decoder-attention-heads", "2", "--optimizer", "adam",
                   "--lr", "5e-3", "--max-tokens", "60", "--max-update", "60", "--seed", "1", "--cpu",
                   "--num-workers", "0", "--required-batch-size-multiple", "1", "--no-epoch-checkpoints",
                   "--disable-validation", "--save-interval", "1000", "--save-dir", root / "ckpt",
                   "--no-progress-bar"), "fairseq-train")
    procs = []
    for subset, name in (("test", "expert.log"), ("valid", "asr.log")):
        out = open(root / name, "w")
        procs.append((_fairseq("fairseq-generate", root / "bin", "--path", root / "ckpt" / "checkpoint_last.pt",
                               "--gen-subset", subset, "--beam", "2", "--batch-size", "4",
                               "--required-batch-size-multiple", "1", "--max-len-a", "0", "--max-len-b", "20",
                               "--cpu", "--num-workers", "0", stdout=out), out, name))
    for proc, out, name in procs:
        _wait(proc, f"fairseq-generate ({name})")
        out.close()

    rows = []
    for i, s in enumerate(test):
        # manifest text is "raw": BPE-free (the log's T- lines keep the BPE pieces)
        rows.append([f"utt_{i:02d}", f"spk{i % 3}", f"/audio/utt_{i:02d}.flac:0:{1600 * (i + 1)}",
                     " ".join(s), str(100 + i), f"x\"'{i} \\", _translate(s).replace("@@ ", "")])
    manifest = write_tsv(root / "manifest.tsv", HEADER, rows)
    return SimpleNamespace(root=root, manifest=manifest, rows=rows, expert=root / "expert.log",
                           asr=root / "asr.log")


@pytest.fixture
def work(tmp_path, data):
    """A private copy of the manifest (tests that write next to it must not see each other)."""
    manifest = tmp_path / "train_st.tsv"
    shutil.copyfile(data.manifest, manifest)
    return manifest


# ------------------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_logs_are_real_and_out_of_order(data):
    """Preconditions of the other tests: the logs print ids out of order, and hypotheses differ."""
    for log in (data.expert, data.asr):
        d, order = log_lines(log, "D")
        assert sorted(d) == list(range(N_TEST))
        assert order != sorted(order), f"{log} happens to be in id order: the join tests prove nothing"
        assert len(set(d.values())) >= N_TEST // 2, "too few distinct hypotheses to tell rows apart"
    expert, _ = log_lines(data.expert, "D")
    asr, _ = log_lines(data.asr, "D")
    assert sum(expert[i] != asr[i] for i in range(N_TEST)) >= N_TEST // 2


@pytest.mark.slow
@pytest.mark.parametrize("order", [HEADER, ["tgt_text", "extra", "n_frames", "id", "src_text", "audio", "speaker"]])
def test_replaces_tgt_by_id_and_keeps_columns_by_name(data, tmp_path, capsys, order):
    perm = [HEADER.index(c) for c in order]
    manifest = write_tsv(tmp_path / "m.tsv", order, [[r[k] for k in perm] for r in data.rows])
    out = tmp_path / "out.tsv"
    status, _, err = run_main(capsys, "-d", manifest, "-o", data.expert, "-O", out)
    assert status == 0, err
    header, rows = read_tsv(out)
    assert header == order
    hyps, log_order = log_lines(data.expert, "D")
    tgt = order.index("tgt_text")
    for i, row in enumerate(rows):
        expected = [data.rows[i][k] for k in perm]
        expected[tgt] = hyps[i]
        assert row == expected, f"row {i}"
    # joining by position in the log would have given another result
    assert [r[tgt] for r in rows] != [hyps[i] for i in log_order]
    assert f"replaced {N_TEST} of {N_TEST} rows" in err
    assert "missing 0" in err
    longest = max(len(h.split()) for h in hyps.values())
    assert f"max hypothesis length {longest} tokens" in err
    assert "reference check vs 'tgt_text': 12 match, 0 differ" in err


@pytest.mark.slow
def test_audiotranscripts_and_output_together(data, work, tmp_path, capsys):
    out = tmp_path / "both.tsv"
    status, _, err = run_main(capsys, "-d", work, "-a", data.asr, "-o", data.expert, "-O", out)
    assert status == 0, err
    header, rows = read_tsv(out)
    assert header == HEADER
    expert, _ = log_lines(data.expert, "D")
    asr, _ = log_lines(data.asr, "D")
    for i, row in enumerate(rows):
        assert row[HEADER.index("tgt_text")] == expert[i]
        assert row[HEADER.index("src_text")] == asr[i]
        for col in ("id", "speaker", "audio", "n_frames", "extra"):
            assert row[HEADER.index(col)] == data.rows[i][HEADER.index(col)]
    assert "src_text: replaced 12 of 12" in err and "tgt_text: replaced 12 of 12" in err
    assert "reference check vs 'src_text': 12 match" in err  # ASR log checked against the transcripts


@pytest.mark.slow
def test_reference_check_columns(data, work, tmp_path, capsys):
    # the ASR log's references are transcripts: as -o (checked against tgt_text) it must fail
    status, _, err = run_main(capsys, "-d", work, "-o", data.asr)
    assert status == 2
    assert_one_line_error(err, str(data.asr), "reference check failed",
                          "12 of 12 T- lines differ from column 'tgt_text'")
    assert not (work.parent / "train_st_generated.tsv").exists()
    status, _, err = run_main(capsys, "-d", work, "-o", data.expert, "--check-ref", "src")
    assert status == 2
    assert_one_line_error(err, str(data.expert), "'src_text'")
    # an "ASR" log decoded on the ST manifest itself has the translations as references: -a falls back to tgt_text
    status, _, err = run_main(capsys, "-d", work, "-a", data.expert, "-O", tmp_path / "o.tsv")
    assert status == 0, err
    assert "reference check vs 'tgt_text': 12 match" in err
    # a log without T- lines cannot be verified: a warning in auto mode, an error when asked for
    no_refs = tmp_path / "no_refs.log"
    no_refs.write_text("".join(l for l in data.expert.read_text().splitlines(keepends=True) if not l.startswith("T-")))
    status, _, err = run_main(capsys, "-d", work, "-o", no_refs, "-O", tmp_path / "o.tsv")
    assert status == 0 and "warning: " in err and "no T- (reference) lines" in err
    status, _, err = run_main(capsys, "-d", work, "-o", no_refs, "--check-ref", "tgt", "-O", tmp_path / "o2.tsv")
    assert status == 2
    assert_one_line_error(err, str(no_refs), "no T- (reference) lines")
    assert not (tmp_path / "o2.tsv").exists()


@pytest.mark.slow
def test_default_output_name_is_atomic_and_leaves_input(data, work, capsys):
    before = work.read_bytes()
    status, _, err = run_main(capsys, "-d", work, "-o", data.expert)
    assert status == 0, err
    out = work.parent / "train_st_generated.tsv"
    assert out.exists() and f"wrote {out}" in err
    assert work.read_bytes() == before
    assert sorted(p.name for p in work.parent.iterdir()) == ["train_st.tsv", "train_st_generated.tsv"]
    hyps, _ = log_lines(data.expert, "D")
    assert [r[-1] for r in read_tsv(out)[1]] == [hyps[i] for i in range(N_TEST)]

    # explicitly naming the input replaces it, atomically (a new inode, not truncate + rewrite)
    inode = work.stat().st_ino
    status, _, err = run_main(capsys, "-d", work, "-o", data.expert, "-O", work)
    assert status == 0, err
    assert work.stat().st_ino != inode
    assert read_tsv(work) == read_tsv(out)
    assert sorted(p.name for p in work.parent.iterdir()) == ["train_st.tsv", "train_st_generated.tsv"]


@pytest.mark.slow
def test_allow_missing_with_truncated_log(data, work, tmp_path, capsys):
    lines = data.expert.read_text().splitlines(keepends=True)
    cut = next(k for k, line in enumerate(lines) if line.startswith("D-")) + 12  # mid-way, inside a sample
    truncated = tmp_path / "truncated.log"
    truncated.write_text("".join(lines[:cut]))
    kept, _ = log_lines(truncated, "D")
    missing = [i for i in range(N_TEST) if i not in kept]
    assert kept and missing

    out = tmp_path / "out.tsv"
    status, _, err = run_main(capsys, "-d", work, "-o", truncated, "-O", out)
    assert status == 2
    assert_one_line_error(err, str(truncated), f"no hypothesis for {len(missing)} of {N_TEST} rows",
                          f"id {missing[0]}", "--allow-missing")
    assert not out.exists()

    ids_file = tmp_path / "missing.txt"
    status, _, err = run_main(capsys, "-d", work, "-o", truncated, "-O", out, "--allow-missing",
                              "--missing-ids", ids_file)
    assert status == 0, err
    _, rows = read_tsv(out)
    tgt = HEADER.index("tgt_text")
    for i, row in enumerate(rows):
        assert row[tgt] == (kept[i] if i in kept else data.rows[i][tgt])
    missing_ids = [data.rows[i][0] for i in missing]
    assert ids_file.read_text().split() == missing_ids
    assert f"missing {len(missing)}" in err
    assert ", ".join(missing_ids) in err


@pytest.mark.slow
def test_log_of_another_row_order_fails(data, tmp_path, capsys):
    perm = list(range(N_TEST))
    random.Random(3).shuffle(perm)
    assert sum(p != i for i, p in enumerate(perm)) > N_TEST // 2
    shuffled = write_tsv(tmp_path / "shuffled.tsv", HEADER, [data.rows[p] for p in perm])
    out = tmp_path / "out.tsv"
    status, _, err = run_main(capsys, "-d", shuffled, "-o", data.expert, "-O", out)
    assert status == 2
    first = next(i for i, p in enumerate(perm) if data.rows[p][-1] != data.rows[i][-1])
    refs, _ = log_lines(data.expert, "T")
    line = assert_one_line_error(err, str(data.expert), "reference check failed", f"id {first}",
                                 repr(refs[first]), repr(data.rows[perm[first]][-1]))
    assert str(shuffled) in line
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shuffled.tsv"]  # no temp file either
    # the reference check is what caught it
    status, _, err = run_main(capsys, "-d", shuffled, "-o", data.expert, "-O", out, "--check-ref", "off")
    assert status == 0, err


@pytest.mark.slow
def test_log_without_hypotheses_fails(data, work, tmp_path, capsys):
    quiet = tmp_path / "quiet.log"
    quiet.write_text("".join(line for line in data.expert.read_text().splitlines(keepends=True)
                             if not line[:2] in ("H-", "D-", "P-")))
    assert "T-0\t" in quiet.read_text()
    status, _, err = run_main(capsys, "-d", work, "-o", quiet)
    assert status == 2
    assert_one_line_error(err, str(quiet), "no H-/D- hypothesis lines", "--quiet")
    assert sorted(p.name for p in work.parent.iterdir()) == ["quiet.log", "train_st.tsv"]


@pytest.mark.slow
def test_malformed_logs_fail_with_file_and_line(data, work, tmp_path, capsys):
    lines = data.expert.read_text().splitlines(keepends=True)
    k = next(k for k, line in enumerate(lines) if line.startswith("D-"))
    first_sample_line = 1 + next(k for k, line in enumerate(lines) if line[:2] in ("S-", "T-", "H-", "D-"))
    cases = {
        "noid.log": (lines[:k] + ["D-\t" + lines[k].split("\t", 1)[1]] + lines[k + 1:], f":{k + 1}:",
                     "numeric sample id"),
        "notab.log": (lines[:k] + [lines[k].replace("\t", " ")] + lines[k + 1:], f":{k + 1}:", "D- line"),
        "twice.log": (lines + lines, f":{len(lines) + first_sample_line}:", "duplicate"),
    }
    for name, (content, where, what) in cases.items():
        log = tmp_path / name
        log.write_text("".join(content))
        status, _, err = run_main(capsys, "-d", work, "-o", log)
        assert status == 2, name
        assert_one_line_error(err, f"{log}{where}", what)
    # a manifest with fewer rows than the log has ids
    short = write_tsv(tmp_path / "short.tsv", HEADER, data.rows[:5])
    status, _, err = run_main(capsys, "-d", short, "-o", data.expert)
    assert status == 2
    assert_one_line_error(err, str(data.expert), "out of range", "5 data rows")
    assert not (work.parent / "train_st_generated.tsv").exists()


def test_needs_output_or_audiotranscripts(tmp_path, capsys):
    manifest = write_tsv(tmp_path / "train_st.tsv", HEADER, [["u0", "s", "a.wav", "a1", "5", "", "b1"]])
    status, _, err = run_main(capsys, "-d", manifest)
    assert status == 2
    assert_one_line_error(err, "-o/--output", "-a/--audiotranscripts")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_st.tsv"]


@pytest.mark.slow
def test_bad_manifests(data, tmp_path, capsys):
    no_tgt = write_tsv(tmp_path / "no_tgt.tsv", HEADER[:-1], [r[:-1] for r in data.rows])
    status, _, err = run_main(capsys, "-d", no_tgt, "-o", data.expert)
    assert status == 2
    assert_one_line_error(err, str(no_tgt), "'tgt_text'")
    ragged = write_tsv(tmp_path / "ragged.tsv", HEADER, data.rows[:3] + [data.rows[3][:-1]] + data.rows[4:])
    status, _, err = run_main(capsys, "-d", ragged, "-o", data.expert)
    assert status == 2
    assert_one_line_error(err, f"{ragged}:5:", "6 tab-separated fields")
    status, _, err = run_main(capsys, "-d", tmp_path / "absent.tsv", "-o", data.expert)
    assert status == 2
    assert_one_line_error(err, "absent.tsv", "No such file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no_tgt.tsv", "ragged.tsv"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script, inside fairseq's import
def test_remove_bpe_from_h_lines(data, work, tmp_path, capsys):
    from fairseq.data.data_utils import post_process

    h, _ = log_lines(data.expert, "H")
    assert any("@@ " in text for text in h.values()), "the tiny model produced no BPE pieces"
    out = tmp_path / "h.tsv"
    status, _, err = run_main(capsys, "-d", work, "-o", data.expert, "-O", out, "--hyp-line", "H")
    assert status == 0, err
    assert [r[-1] for r in read_tsv(out)[1]] == [h[i] for i in range(N_TEST)]
    status, _, err = run_main(capsys, "-d", work, "-o", data.expert, "-O", out, "--hyp-line", "H",
                              "--remove-bpe")
    assert status == 0, err
    got = [r[-1] for r in read_tsv(out)[1]]
    assert got == [post_process(h[i], "@@ ") for i in range(N_TEST)]
    assert not any("@@" in text for text in got)
    assert any(text != h[i] for i, text in enumerate(got))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script, inside fairseq's import
def test_detokenize_moses_on_handwritten_log(tmp_path, capsys):
    manifest = write_tsv(tmp_path / "m.tsv", ["tgt_text", "id"], [["Das ist gut.", "a"], ["Wie geht's?", "b"]])
    log = tmp_path / "expert.log"
    log.write_text("S-1\tHow are you ?\nT-1\tWie geht &apos;s ?\nH-1\t-0.2\tWie geht es dir ?\n"
                   "D-1\t-0.2\tWie geht es dir ?\nS-0\tThat is good .\nT-0\tdas ist g@@ ut .\n"
                   "H-0\t-0.1\tDas ist sehr g@@ ut .\nD-0\t-0.1\tDas ist sehr g@@ ut .\n")
    status, _, err = run_main(capsys, "-d", manifest, "-o", log, "--remove-bpe", "--detokenize", "moses",
                              "--lang", "de")
    assert status == 0, err
    assert read_tsv(tmp_path / "m_generated.tsv")[1] == [["Das ist sehr gut.", "a"], ["Wie geht es dir?", "b"]]
    status, _, err = run_main(capsys, "-d", manifest, "-o", log, "--detokenize", "moses")
    assert status == 2
    assert_one_line_error(err, "--lang")


def _handwritten(tmp_path):
    """A 2-row manifest and its fairseq-generate log (ids out of order), written by hand."""
    manifest = write_tsv(tmp_path / "dev.tsv", ["id", "src_text", "tgt_text"], [["a", "hello", "hallo"],
                                                                                ["b", "good", "gut"]])
    log = tmp_path / "expert.log"
    log.write_text("S-1\tgood\nT-1\tgut\nH-1\t-0.2\tsehr gut\nD-1\t-0.2\tsehr gut\n"
                   "S-0\thello\nT-0\thallo\nH-0\t-0.1\thallo du\nD-0\t-0.1\thallo du\n")
    return manifest, log


def test_no_output_names_an_input_or_the_other_output(tmp_path, capsys):
    manifest, log = _handwritten(tmp_path)
    os.link(log, tmp_path / "hard.log")  # another name of the same file
    out = tmp_path / "out.tsv"
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for argv, needles in [
        (["-o", log, "-O", out, "--missing-ids", manifest], [f"--missing-ids {manifest}: the same file as -d"]),
        (["-o", log, "-O", out, "--missing-ids", log], ["--missing-ids", "the same file as -o/--output"]),
        (["-a", log, "-O", out, "--missing-ids", tmp_path / "hard.log"], ["the same file as -a/--audiotranscripts"]),
        (["-o", log, "-O", out, "--missing-ids", tmp_path / "." / "out.tsv"], ["the same file as -O/--out-file"]),
        (["-o", log, "-O", tmp_path / "hard.log"], [f"-O/--out-file {tmp_path / 'hard.log'}: the same file as -o"]),
        # German translations must not become the transcripts
        (["-o", log, "-a", tmp_path / "hard.log"], ["-o/--output", "-a/--audiotranscripts", "are the same log"]),
        (["-o", log, "-O", ""], ["-O/--out-file: empty path"]),
        (["-o", log, "-a", ""], ["-a/--audiotranscripts: empty path"]),
    ]:
        status, _, err = run_main(capsys, "-d", manifest, *argv)
        assert status == 2, (argv, err)
        assert_one_line_error(err, *needles)
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before, argv


def test_fields_over_the_csv_limit_fail_naming_the_line(tmp_path, capsys):
    """fairseq reads manifests with csv's default field_size_limit (131072 characters): a longer hypothesis
    would give a manifest nobody can read back."""
    manifest, log = _handwritten(tmp_path)
    long = " ".join(["wort"] * 30000)
    log.write_text(log.read_text().replace("sehr gut", long))  # line 4 is D-1
    status, _, err = run_main(capsys, "-d", manifest, "-o", log)
    assert status == 2
    assert_one_line_error(err, f"{log}:4: hypothesis of id 1 has {len(long)} characters", "131072")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.tsv", "expert.log"]
    too_long = write_tsv(tmp_path / "long.tsv", ["id", "src_text", "tgt_text"], [["a", "hello", "hallo"],
                                                                                 ["b", long, "gut"]])
    status, _, err = run_main(capsys, "-d", too_long, "-o", log)
    assert status == 2
    assert_one_line_error(err, f"{too_long}:3: field larger than field limit (131072)")


def test_manifest_with_bom_or_only_a_header(tmp_path, capsys):
    manifest, log = _handwritten(tmp_path)
    bom = tmp_path / "bom.tsv"
    bom.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    status, _, err = run_main(capsys, "-d", bom, "-o", log)
    assert status == 2
    assert_one_line_error(err, f"{bom}: line 1 starts with a UTF-8 byte-order mark")
    header_only = write_tsv(tmp_path / "header.tsv", ["id", "src_text", "tgt_text"], [])
    status, _, err = run_main(capsys, "-d", header_only, "-o", log)
    assert status == 2
    assert_one_line_error(err, f"{header_only}: no data rows, only a header")


def test_reference_normalization():
    norm = gd.normalize_for_check
    assert norm("Das ist g@@ ut .") == norm("das ist gut.") == "dasistgut"
    assert norm("\u2581Wie \u2581geht &apos;s ?") == norm("Wie geht's?")
    assert gd._wildcard_match(norm("ein <<unk>> Haus"), norm("Ein schönes Haus."))
    assert not gd._wildcard_match(norm("ein <<unk>> Haus"), norm("Ein schönes Boot."))
    assert not gd._wildcard_match(norm("das ist gut"), norm("das ist schlecht"))


def test_help_documents_the_flows(capsys):
    status, out, _ = run_main(capsys, "--help")
    assert status == 0
    for needle in ("ImitKDT", "sequence-level KD", "fairseq-preprocess", "generate", "--criterion imit_kd_CE",
                   "--task speech_to_text_kd", "--task speech_to_text ", "-a kd/asr_train.log"):
        assert needle in out, needle


def test_cli_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "-d", str(tmp_path / "x.tsv"), "-a",
                           str(tmp_path / "asr.log")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("create_wmt19_generated_dataset.py: error: ") and "x.tsv" in proc.stderr


@pytest.mark.slow
def test_nbest_log_keeps_the_best_and_repeats_fail(data, work, tmp_path, capsys):
    """--nbest 3: an id's hypotheses follow one another (accepted, the best kept); the same H-/D- pair
    again after another sample's lines, or two logs concatenated, is an error naming file, line and id."""
    log = tmp_path / "nbest.log"
    with open(log, "w") as out:
        _wait(_fairseq("fairseq-generate", data.root / "bin", "--path", data.root / "ckpt" / "checkpoint_last.pt",
                       "--gen-subset", "test", "--beam", "3", "--nbest", "3", "--batch-size", "4",
                       "--required-batch-size-multiple", "1", "--max-len-a", "0", "--max-len-b", "20", "--cpu",
                       "--num-workers", "0", stdout=out), "fairseq-generate --nbest 3")
    lines = log.read_text().splitlines(keepends=True)
    d_lines = [line for line in lines if line.startswith("D-")]
    assert len(d_lines) == 3 * N_TEST
    best = {}
    for line in d_lines:
        i = int(line[2:].split("\t")[0])
        best.setdefault(i, line.rstrip("\n").split("\t")[2])
    status, _, err = run_main(capsys, "-d", work, "-o", log, "-O", tmp_path / "out.tsv")
    assert status == 0, err
    assert [r[-1] for r in read_tsv(tmp_path / "out.tsv")[1]] == [best[i] for i in range(N_TEST)]

    # sample 2's block, then another H-/D- pair of an id printed before it
    order = [int(line[2:].split("\t")[0]) for line in lines if line.startswith("S-")]
    earlier = next(i for i in order if i != 2)
    assert order.index(earlier) < order.index(2)
    end = max(k for k, line in enumerate(lines) if line.split("\t")[0] in ("H-2", "D-2", "P-2"))
    bad = tmp_path / "appended.log"
    bad.write_text("".join(lines[:end + 1] + [f"H-{earlier}\t-0.1\tb1\n", f"D-{earlier}\t-0.1\tb1\n"] + lines[end + 1:]))
    status, _, err = run_main(capsys, "-d", work, "-o", bad, "-O", tmp_path / "bad.tsv")
    assert status == 2
    assert_one_line_error(err, f"{bad}:{end + 2}: duplicate H- line for id {earlier} ", "not an n-best list")
    assert not (tmp_path / "bad.tsv").exists()




def _paused_run(tmp_path, *argv):
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", toydata.PAUSE_IN_WRITE, str(SCRIPT.parent), str(ready),
                             *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(1200):
        if ready.exists() or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert ready.exists(), proc.communicate()[1]
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_write_removes_the_temporary_file(data, work, tmp_path, signum):
    out = tmp_path / "out.tsv"
    proc = _paused_run(tmp_path, "-d", work, "-o", data.expert, "-O", out)
    temps = sorted(p.name for p in tmp_path.glob(".out.tsv.*.tmp"))
    assert len(temps) == 1
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum
    assert err.strip() == f"{gd.PROG}: error: interrupted by {signal.Signals(signum).name}; temporary files removed"
    assert not out.exists() and not list(tmp_path.glob(".out.tsv.*.tmp"))


@pytest.mark.slow
def test_temporary_file_of_a_killed_run_is_removed_by_the_next(data, work, tmp_path, capsys):
    out = tmp_path / "out.tsv"
    proc = _paused_run(tmp_path, "-d", work, "-o", data.expert, "-O", out)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.communicate(timeout=60)
    left = list(tmp_path.glob(".out.tsv.*.tmp"))
    assert len(left) == 1 and f"-{proc.pid}." in left[0].name
    # a temporary file of a running process (this one) is not touched
    alive = tmp_path / left[0].name.replace(f"-{proc.pid}.", f"-{os.getpid()}.")
    alive.write_text("in progress\n")
    status, _, err = run_main(capsys, "-d", work, "-o", data.expert, "-O", out)
    assert status == 0, err
    assert f"warning: removed {left[0]}, left by process {proc.pid}" in err
    assert not left[0].exists() and alive.exists()
    hyps, _ = log_lines(data.expert, "D")
    assert [r[-1] for r in read_tsv(out)[1]] == [hyps[i] for i in range(N_TEST)]
