"""Every bad input ends in ONE line naming the file, row or flag (issue 12): a table, one row per bad input.

A row is a name, a way to build the bad input on copies of the CI-size toy fixtures (tests/toydata.py,
session fixtures in conftest.py), the command (a console script's real entry point, run in this
process so that fairseq is imported once, or an example script's ``main``), the expected exit status
and a regex the single ``error: ...`` line must match. Some rows check more (``check``): that nothing
was written or lost, or that the error came before the student model was built.

Rows are grouped by where the input goes: manifests, task flags, checkpoints/experts, criterion flags,
the dataset script, data preparation and the corpus builder.
"""
import importlib.util
import logging
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, List, Optional

import numpy as np
import pytest
import soundfile as sf

import toydata

import imitkd  # noqa: F401  (registers the plugin)
import imitkd.cli
import fairseq_cli.generate  # noqa: F401  (imported now: they configure logging once, at import)
import fairseq_cli.train  # noqa: F401
from fairseq.tasks.speech_to_text import SpeechToTextTask
from imitkd_data.ddtp.apt import fetch_translations
from imitkd_data.errors import DataPrepError
from imitkd_data.feature_store import zip_manifest

REPO = Path(__file__).resolve().parents[1]
GD_SCRIPT = REPO / "examples" / "imitkd" / "create_wmt19_generated_dataset.py"
_spec = importlib.util.spec_from_file_location("prep_s2t_data", REPO / "examples" / "speech_to_text" / "prep_s2t_data.py")
prep_s2t_data = importlib.util.module_from_spec(_spec)  # the CLI (examples/ is no package)
_spec.loader.exec_module(prep_s2t_data)
_spec = importlib.util.spec_from_file_location("ctc_transcribe", REPO / "examples" / "imitkd" / "ctc_transcribe.py")
ctc_transcribe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ctc_transcribe)

sys.path.insert(0, str(GD_SCRIPT.parent))
import create_wmt19_generated_dataset as gd  # noqa: E402

ERROR_LINE = re.compile(r"^([\w.-]+: )?error: ")


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def expert_log(toy, tmp_path_factory):
    """A real fairseq-generate log: the toy expert decoding the toy test split (20 samples, printed in
    length-sorted batch order), by imitkd-generate in this process."""
    out = tmp_path_factory.mktemp("expert_log")
    argv = [toy / "mt-bin", "--path", toy / "expert" / "checkpoint_best.pt", "--gen-subset", "test", "--beam", "2",
            "--batch-size", "6", "--cpu", "--source-lang", "en", "--target-lang", "de", "--results-path", out]
    status, err = _console_script(imitkd.cli.generate, argv)
    assert status == 0, err
    log = out / "generate-test.txt"
    assert sum(line.startswith("D-") for line in log.read_text().splitlines()) == toydata.SPLITS["test"]
    assert [p.name for p in out.iterdir()] == ["generate-test.txt"]  # (written in a temporary dir, moved on success)
    return log


@pytest.fixture(scope="module")
def student_ckpt(toy, tmp_path_factory):
    """A student checkpoint after 1 update (label-smoothed NLL): enough for imitkd-generate to start."""
    save = tmp_path_factory.mktemp("student")
    argv = toydata.student_train_args(toy, "label_smoothed_cross_entropy", save, 1, ["--disable-validation"])
    status, err = _console_script(imitkd.cli.train, argv)
    assert status == 0, err
    return save / "checkpoint_last.pt"


# ----------------------------------------------------------------------------------------- commands
def _console_script(entry, argv):
    """Run a console script's entry point (``imitkd.cli.train`` ...) with ``argv``; returns (status, stderr
    text). An exception other than SystemExit is what a user would see as a traceback: status 'traceback'."""
    from io import StringIO

    err = StringIO()
    root = logging.getLogger()
    with pytest.MonkeyPatch.context() as mp:
        # fairseq's validate resets the root logger onto sys.stdout (here the test's capture, closed after it)
        mp.setattr(root, "handlers", list(root.handlers))
        mp.setattr(root, "level", root.level)
        mp.setattr(sys, "argv", [entry.__name__, *map(str, argv)])
        mp.setattr(sys, "stderr", err)
        try:
            entry()
            status = 0
        except SystemExit as e:
            status = e.code
        except Exception as e:  # noqa: BLE001  (would be a traceback on the console)
            return "traceback", f"{err.getvalue()}Traceback: {type(e).__name__}: {e}"
    return status, err.getvalue()


def _script_main(main):
    def run(argv, ctx):
        status = main([str(a) for a in argv])
        return status, ctx.capsys.readouterr().err
    return run


def _fetch_translations(argv, ctx):
    """imitkd_data.ddtp.apt.fetch_translations(cache_dir, apt_root=ROOT) reported as build_ddtp_st.py's ``main``
    reports errors (the CLI has no flag for the apt root; the system's is "/")."""
    cache, root = argv
    try:
        fetch_translations(Path(cache), apt_root=root)
    except DataPrepError as e:  # what build_ddtp_st.main catches and prints
        return 2, f"error: {e}\n"
    return 0, ""




def _signal_mid_write(signum):
    def run(argv, ctx):
        ready = ctx.tmp / "ready"
        proc = subprocess.Popen([sys.executable, "-c", toydata.PAUSE_IN_WRITE, str(GD_SCRIPT.parent), str(ready),
                                 *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while not ready.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        ctx.temp_files_mid_write = sorted(p.name for p in ctx.tmp.glob(".*.tmp"))
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        return proc.returncode, err
    return run


COMMANDS = {
    "imitkd-train": lambda argv, ctx: _console_script(imitkd.cli.train, argv),
    "imitkd-generate": lambda argv, ctx: _console_script(imitkd.cli.generate, argv),
    "imitkd-validate": lambda argv, ctx: _console_script(imitkd.cli.validate, argv),
    "create_wmt19_generated_dataset.py": _script_main(gd.main),
    "create_wmt19_generated_dataset.py + SIGTERM mid-write": _signal_mid_write(signal.SIGTERM),
    "create_wmt19_generated_dataset.py + SIGHUP mid-write": _signal_mid_write(signal.SIGHUP),
    "prep_s2t_data.py": _script_main(prep_s2t_data.main),
    "ctc_transcribe.py": _script_main(ctc_transcribe.main),
    "build_ddtp_st.fetch_translations": _fetch_translations,
}


# ------------------------------------------------------------------------------------ input builders
def s2t_copy(ctx) -> Path:
    """The toy speech data dir (manifests, config, dictionary; the features stay where they are)."""
    data = ctx.tmp / "s2t"
    if not data.exists():
        shutil.copytree(ctx.toy / "s2t", data, ignore=shutil.ignore_patterns("feats"))
    return data


def train_argv(ctx, data=None, criterion="imit_kd_CE", extra=()):
    args = toydata.student_train_args(ctx.toy, criterion, ctx.tmp / "ckpt", 3, extra)
    args[0] = data or s2t_copy(ctx)
    return args


def edit_tsv_line(path: Path, line: int, edit: Callable[[bytes], bytes]):
    """Replace line ``line`` (1 = header) of a manifest by ``edit(old bytes)``."""
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = edit(lines[line - 1])
    path.write_bytes(b"\n".join(lines))


def latin1_byte(ctx, split="train", line=8):
    data = s2t_copy(ctx)
    edit_tsv_line(data / f"{split}.tsv", line, lambda b: b + b" caf\xe9")  # 'café' in latin-1, in src_text
    return data


def with_bom(ctx):
    data = s2t_copy(ctx)
    edit_tsv_line(data / "train.tsv", 1, lambda b: b"\xef\xbb\xbf" + b)
    return train_argv(ctx, data)


def header_only(ctx):
    data = s2t_copy(ctx)
    (data / "train.tsv").write_text((ctx.toy / "s2t" / "train.tsv").read_text().splitlines()[0] + "\n")
    return train_argv(ctx, data)


def empty_src_text(ctx, line=5):
    data = s2t_copy(ctx)
    edit_tsv_line(data / "train.tsv", line, lambda b: b.rsplit(b"\t", 1)[0] + b"\t ")
    return train_argv(ctx, data)


def text_arch(ctx, criterion="imit_kd_CE", extra=()):
    """A text student (--arch transformer, without the speech arch's --conv-channels)."""
    args = [a if a != "s2t_transformer_s" else "transformer" for a in train_argv(ctx, criterion=criterion)]
    i = args.index("--conv-channels")
    return args[:i] + args[i + 2:] + list(extra)


def student_src_dict(ctx, text):
    """A --student-src-dict (relative to the data directory) holding ``text``."""
    (s2t_copy(ctx) / "dict.xx.txt").write_text(text)
    return "dict.xx.txt"


def ragged_row(ctx):
    data = s2t_copy(ctx)
    edit_tsv_line(data / "dev.tsv", 4, lambda b: b"\t".join(b.split(b"\t")[:3]))
    return train_argv(ctx, data)


def frames_not_a_number(ctx, line=4):
    data = s2t_copy(ctx)
    edit_tsv_line(data / "train.tsv", line, lambda b: b"\t".join(f if i != 2 else b"1e3" for i, f in enumerate(b.split(b"\t"))))
    return train_argv(ctx, data)


TOY_CONFIG = "input_channels: 1\ninput_feat_per_channel: 80\nvocab_filename: dict.de.txt\n"  #: toydata's


def with_config(ctx, text):
    """train_argv reading the data config ``text`` (DATA/cfg.yaml, in the copy of the toy data dir)."""
    data = s2t_copy(ctx)
    (data / "cfg.yaml").write_text(text)
    return train_argv(ctx, data, extra=["--config-yaml", "cfg.yaml"])


def generate_argv(ctx, *extra, path=None, data=None):
    """imitkd-generate of the student checkpoint (or ``path``) on the toy test split (of ``data``)."""
    return [data or s2t_copy(ctx), "--task", "speech_to_text_kd", "--config-yaml", "config.yaml", "--gen-subset",
            "test", "--path", path or ctx.student_ckpt, "--cpu", "--batch-size", "4", *extra]


def resume_student(ctx, *extra):
    """train_argv whose --save-dir holds the (label-smoothed NLL) student checkpoint as checkpoint_last.pt."""
    (ctx.tmp / "ckpt").mkdir()
    shutil.copyfile(ctx.student_ckpt, ctx.tmp / "ckpt" / "checkpoint_last.pt")
    return train_argv(ctx, extra=list(extra))


def small_vocab(ctx, drop=3):
    """The copy of the toy data whose config.yaml names, as vocab_filename, the toy dictionary less its last
    ``drop`` entries (a regenerated vocabulary): ``drop`` fewer than the student's decoder embeddings."""
    data = s2t_copy(ctx)
    lines = (data / "dict.de.txt").read_text().splitlines(keepends=True)
    (data / "dict.small.txt").write_text("".join(lines[:-drop]))
    (data / "config.yaml").write_text(TOY_CONFIG.replace("dict.de.txt", "dict.small.txt"))
    return data


def resume_small_vocab(ctx, *extra):
    """A label-smoothed training (no expert) resuming the student checkpoint, on the small vocabulary."""
    small_vocab(ctx)
    if not extra:
        (ctx.tmp / "ckpt").mkdir()
        shutil.copyfile(ctx.student_ckpt, ctx.tmp / "ckpt" / "checkpoint_last.pt")
    return train_argv(ctx, criterion="label_smoothed_cross_entropy", extra=list(extra))


def mt_small_src_dict(ctx, drop=3):
    """imitkd-generate of the toy text expert on a copy of its binarized data whose dict.en.txt lacks the
    last ``drop`` entries."""
    data = ctx.tmp / "mt-bin"
    shutil.copytree(ctx.toy / "mt-bin", data)
    lines = (data / "dict.en.txt").read_text().splitlines(keepends=True)
    (data / "dict.en.txt").write_text("".join(lines[:-drop]))
    return [data, "--path", ctx.toy / "expert" / "checkpoint_best.pt", "--gen-subset", "test", "--cpu",
            "--source-lang", "en", "--target-lang", "de", "--batch-size", "4"]


def ctc_argv(ctx, path, *extra):
    return [s2t_copy(ctx), "--config-yaml", "config.yaml", "--gen-subset", "test", "--path", path, "--cpu", *extra]


def drop_column(ctx, name):
    data = s2t_copy(ctx)
    for split in ("train", "dev", "test"):
        rows = [line.split("\t") for line in (data / f"{split}.tsv").read_text().splitlines()]
        i = rows[0].index(name)
        (data / f"{split}.tsv").write_text("".join("\t".join(r[:i] + r[i + 1:]) + "\n" for r in rows))
    return data


def gd_inputs(ctx, log_lines=None, name="expert.log"):
    """(manifest, log) for create_wmt19_generated_dataset.py: the toy test manifest and the real expert log
    (or ``log_lines``)."""
    manifest = ctx.tmp / "test.tsv"
    shutil.copyfile(ctx.toy / "s2t" / "test.tsv", manifest)
    log = ctx.tmp / name
    if log_lines is None:
        shutil.copyfile(ctx.expert_log, log)
    else:
        log.write_text("".join(log_lines))
    return manifest, log


def append_earlier_pair_after_sample_2(ctx):
    """Sample 2's block followed by a second H-/D- pair of an id printed *before* sample 2 (item 6)."""
    lines = ctx.expert_log.read_text().splitlines(keepends=True)
    order = [int(line[2:].split("\t")[0]) for line in lines if line.startswith("S-")]
    earlier = order[0] if order[0] != 2 else order[1]
    assert order.index(earlier) < order.index(2)
    end = max(k for k, line in enumerate(lines) if line.split("\t")[0] in ("H-2", "D-2", "P-2"))
    extra = [f"H-{earlier}\t-0.5\tzwei drei\n", f"D-{earlier}\t-0.5\tzwei drei\n"]
    manifest, log = gd_inputs(ctx, lines[:end + 1] + extra + lines[end + 1:])
    ctx.expect_id, ctx.expect_line = earlier, end + 2
    return ["-d", manifest, "-o", log, "-O", ctx.tmp / "out.tsv"]


def gd_manifest_not_utf8(ctx, line=9):
    manifest, log = gd_inputs(ctx)
    edit_tsv_line(manifest, line, lambda b: b + b"\xe9")
    return ["-d", manifest, "-o", log, "-O", ctx.tmp / "out.tsv"]


def gd_argv(ctx):
    manifest, log = gd_inputs(ctx)
    return ["-d", manifest, "-o", log, "-O", ctx.tmp / "out.tsv"]


def gd_long_hypothesis(ctx):
    """A D- line longer than csv's field limit (131072 characters), which fairseq's manifest reader keeps."""
    lines = ctx.expert_log.read_text().splitlines(keepends=True)
    k = next(k for k, line in enumerate(lines) if line.startswith("D-"))
    lines[k] = lines[k].rstrip("\n") + " wort" * 30000 + "\n"
    manifest, log = gd_inputs(ctx, lines)
    ctx.expect_line = k + 1
    return ["-d", manifest, "-o", log, "-O", ctx.tmp / "out.tsv"]


def grep_two_logs(ctx, *flags):
    """What `grep [-h] -P '^[HD]-' a.log b.log > c.log` gives for two logs of the same split (item 6)."""
    for name in ("a.log", "b.log"):
        shutil.copyfile(ctx.expert_log, ctx.tmp / name)
    out = ctx.tmp / "c.log"
    with open(out, "w") as f:
        subprocess.run(["grep", *flags, "-P", "^[HD]-", "a.log", "b.log"], cwd=ctx.tmp, stdout=f, check=True)
    assert sum(line.startswith(("D-", "a.log:D-", "b.log:D-")) for line in out.read_text().splitlines()) == 40
    manifest, _ = gd_inputs(ctx)
    return ["-d", manifest, "-o", out, "-O", ctx.tmp / "out.tsv"]


def tsv_layout(ctx, drop_audio=None):
    """A generic prep_s2t_data.py 'tsv' input: 3 utterances (16 kHz wav), one of them possibly missing."""
    root = ctx.tmp / "in"
    (root / "audio").mkdir(parents=True)
    lines = ["id\taudio\tsrc_text\ttgt_text"]
    t = np.arange(int(0.4 * 16000)) / 16000
    for i in range(3):
        sf.write(root / "audio" / f"u{i}.wav", 0.3 * np.sin(2 * np.pi * (200 + 80 * i) * t), 16000, subtype="PCM_16")
        lines.append(f"u{i}\taudio/u{i}.wav\thello {i}\thallo {i}")
    (root / "train.tsv").write_text("\n".join(lines) + "\n")
    if drop_audio is not None:
        (root / "audio" / f"u{drop_audio}.wav").unlink()
    return root


def prep_argv(ctx, root, *extra):
    return ["--layout", "tsv", "--data-root", root, "--out-dir", ctx.tmp / "out", "--splits", "train",
            "--vocab-type", "char", "--vocab-size", "20", "--no-progress", *extra]


def a_file(ctx) -> Path:
    (ctx.tmp / "a-file").write_text("")
    return ctx.tmp / "a-file"


def out_dir_under_a_file(ctx):
    return prep_argv(ctx, tsv_layout(ctx), "--out-dir", a_file(ctx) / "out")  # the last --out-dir counts


def prepared_at_16k(ctx):
    root = tsv_layout(ctx)
    assert prep_s2t_data.main([str(a) for a in prep_argv(ctx, root)]) == 0
    ctx.zip_before = (ctx.tmp / "out" / "fbank80.zip").read_bytes()
    return prep_argv(ctx, root, "--sample-rate", "8000")


def apt_root(ctx, text, name="sources.list.d/extra.sources"):
    root = ctx.tmp / "root"
    (root / "etc" / "apt" / "sources.list.d").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "apt" / name).write_text(text)
    return [ctx.tmp / "apt-cache", root]


# the features a row names: another width, n_frames, values (read per item); zip cells (checked at load)
def set_cell(path: Path, line: int, column: str, value: str):
    """Set one cell of line ``line`` (1 = header) of a manifest."""
    at = path.read_text().splitlines()[0].split("\t").index(column)
    edit_tsv_line(path, line, lambda b: b"\t".join(value.encode() if i == at else f for i, f in enumerate(b.split(b"\t"))))


def row_features(data: Path, split: str, line: int) -> np.ndarray:
    """The features the (toy, .npy) row on ``line`` of ``split`` names."""
    return np.load((data / f"{split}.tsv").read_text().splitlines()[line - 1].split("\t")[1])


def bad_features(ctx, split, line, make):
    """A copy of the toy data whose ``split`` row on ``line`` names ``make(its features)`` (a new .npy)."""
    data = s2t_copy(ctx)
    path = ctx.tmp / f"{split}_{line}.npy"
    np.save(path, make(row_features(data, split, line)))
    set_cell(data / f"{split}.tsv", line, "audio", str(path))
    return data


def wide_row(ctx, split="train", line=100):
    """One later row with 40 features per frame among 80-dim ones (the first row of each split is fine)."""
    return bad_features(ctx, split, line, lambda f: f[:, :40])


def frames_off(ctx, split="train", line=100):
    """One row whose n_frames is 10 times its features' frame count."""
    data = s2t_copy(ctx)
    set_cell(data / f"{split}.tsv", line, "n_frames", str(10 * len(row_features(data, split, line))))
    return data


def missing_npy(ctx, split="train", line=40):
    data = s2t_copy(ctx)
    set_cell(data / f"{split}.tsv", line, "audio", str(ctx.tmp / "nosuch.npy"))
    return data


def nan_row(ctx, split="train", line=100):
    def make(f):
        f = f.copy()
        f[3, 7] = np.nan
        return f
    return bad_features(ctx, split, line, make)


def zipped(ctx, split):
    """A copy of the toy data whose ``split`` manifest reads its features from one stored zip, ``DATA/SPLIT.zip``
    (cells ``DATA/SPLIT.zip:OFFSET:LENGTH``, as prep_s2t_data.py writes them relative to audio_root)."""
    import zipfile

    data = s2t_copy(ctx)
    tsv = data / f"{split}.tsv"
    rows = [line.split("\t") for line in tsv.read_text().splitlines()]
    with zipfile.ZipFile(data / f"{split}.zip", "w", zipfile.ZIP_STORED) as zf:
        for row in rows[1:]:
            zf.write(row[1], f"{row[0]}.npy")
    cells = zip_manifest(data / f"{split}.zip")
    for row in rows[1:]:
        row[1] = f"{data}/{cells[row[0]][0]}"
    tsv.write_text("".join("\t".join(r) + "\n" for r in rows))
    return data


def zip_cell(ctx, split, line, edit):
    """``zipped`` with the audio cell on ``line`` replaced by ``edit(zip path, offset, length)``."""
    data = zipped(ctx, split)
    cell = (data / f"{split}.tsv").read_text().splitlines()[line - 1].split("\t")[1]
    file, offset, length = cell.split(":")
    set_cell(data / f"{split}.tsv", line, "audio", edit(file, int(offset), int(length)))
    return data


# ------------------------------------------------------------------------------------------- checks
def truncated_expert(ctx) -> Path:
    """The first 1000 bytes of the toy expert: a checkpoint still being written."""
    half = ctx.tmp / "half.pt"
    half.write_bytes((ctx.toy / "expert" / "checkpoint_best.pt").read_bytes()[:1000])
    return half


def before_model(ctx):
    assert ctx.models_built == 0, "the error came after the student model was built"


def earlier_results(ctx):
    """A --results-path directory holding the generate-test.txt of an earlier run."""
    (ctx.tmp / "results").mkdir()
    (ctx.tmp / "results" / "generate-test.txt").write_text("the earlier run's translations\n")
    return ctx.tmp / "results"


def earlier_results_kept(ctx):
    assert sorted(p.name for p in (ctx.tmp / "results").iterdir()) == ["generate-test.txt"], "a temporary dir was left"
    assert (ctx.tmp / "results" / "generate-test.txt").read_text() == "the earlier run's translations\n"


def only_the_error_line(ctx):
    """Nothing but the error line on stderr (argparse printed fairseq's whole usage, ≈ 200 lines, before it)."""
    assert ctx.err.strip().splitlines() == [ctx.line], ctx.err[:2000]
    assert ctx.models_built == 0


def checkpoint_kept(ctx):
    assert (ctx.tmp / "ckpt" / "checkpoint_last.pt").read_bytes() == ctx.student_ckpt.read_bytes()


def nothing_written(ctx):
    assert not (ctx.tmp / "out.tsv").exists()
    assert not list(ctx.tmp.glob(".*.tmp")), "a temporary file was left"


def manifest_kept(ctx):
    nothing_written(ctx)
    assert (ctx.tmp / "test.tsv").read_bytes() == (ctx.toy / "s2t" / "test.tsv").read_bytes()


def names_long_hypothesis_line(ctx):
    nothing_written(ctx)
    assert f"expert.log:{ctx.expect_line}: " in ctx.line


def names_repeated_pair(ctx):
    nothing_written(ctx)
    assert re.search(rf"expert\.log:{ctx.expect_line}: duplicate H- line for id {ctx.expect_id} ", ctx.line)


def cleaned_up_after_signal(ctx):
    assert len(ctx.temp_files_mid_write) == 1, "the signal did not arrive mid-write"
    assert re.fullmatch(r"\.out\.tsv\.[\w-]+-\d+\.\w+\.tmp", ctx.temp_files_mid_write[0])
    nothing_written(ctx)
    assert (ctx.tmp / "test.tsv").read_bytes() == (ctx.toy / "s2t" / "test.tsv").read_bytes()


def features_kept(ctx):
    assert (ctx.tmp / "out" / "fbank80.zip").read_bytes() == ctx.zip_before


@dataclass
class Row:
    name: str
    build: Callable  # ctx -> argv of the command (writes the bad input under ctx.tmp)
    command: str  # a key of COMMANDS
    status: object  # expected exit status
    message: str  # regex of the one error line
    check: Optional[Callable] = None  # ctx -> further assertions
    needs: tuple = ()  # more session fixtures the row reads (e.g. "toy_student")


ROWS: List[Row] = [
    # -- manifests read by the task speech_to_text_kd (item 4: at start-up, before the model is built)
    Row("manifest byte not UTF-8 (train)", lambda c: train_argv(c, latin1_byte(c)), "imitkd-train", 2,
        r"^error: .*/s2t/train\.tsv: line 8 \(id=train_6\) is not UTF-8: byte 0xe9 in column 'src_text' "
        r"\(--train-subset train\); re-encode", before_model),
    Row("manifest byte not UTF-8 (dev)", lambda c: train_argv(c, latin1_byte(c, "dev", 3)), "imitkd-train", 2,
        r"^error: .*/s2t/dev\.tsv: line 3 \(id=dev_1\) is not UTF-8: byte 0xe9 .*\(--valid-subset dev\)",
        before_model),
    Row("manifest byte not UTF-8 (generate)", lambda c: [
        latin1_byte(c, "test", 5), "--task", "speech_to_text_kd", "--config-yaml", "config.yaml", "--gen-subset",
        "test", "--path", c.student_ckpt, "--cpu", "--batch-size", "4"], "imitkd-generate", 2,
        r"^error: .*/s2t/test\.tsv: line 5 \(id=test_3\) is not UTF-8: byte 0xe9 in column 'src_text'"),
    Row("manifest with byte-order mark", with_bom, "imitkd-train", 2,
        r"^error: .*/s2t/train\.tsv: line 1 starts with a UTF-8 byte-order mark", before_model),
    Row("manifest missing (--train-subset)", lambda c: train_argv(c, extra=["--train-subset", "train_st"]),
        "imitkd-train", 2, r"^error: .*/s2t/train_st\.tsv: manifest not found \(--train-subset train_st\)$", before_model),
    Row("--train-subset not named train*", lambda c: train_argv(c, extra=["--train-subset", "dev"]),
        "imitkd-train", 2, r"^error: --train-subset dev: the speech_to_text tasks need training manifests named "
        r"train\*: rename dev\.tsv", before_model),
    Row("manifest with a header only", header_only, "imitkd-train", 2,
        r"^error: .*/s2t/train\.tsv: no data rows, only a header \(--train-subset train\)$", before_model),
    Row("manifest row with a cell missing", ragged_row, "imitkd-train", 2,
        r"^error: .*/s2t/dev\.tsv: line 4 \(id=dev_2\) has 3 tab-separated fields, the header has 6 "
        r"\(--valid-subset dev\); a tab inside a text, or a cell missing\?$", before_model),
    Row("manifest n_frames not an integer", frames_not_a_number, "imitkd-train", 2,
        r"^error: .*/s2t/train\.tsv: line 4 \(id=train_2\) has n_frames '1e3' \(--train-subset train\); it must be .* a positive integer$",
        before_model),
    Row("manifest without n_frames (generate)", lambda c: [
        drop_column(c, "n_frames"), "--task", "speech_to_text_kd", "--config-yaml", "config.yaml", "--gen-subset",
        "test", "--path", c.student_ckpt, "--cpu", "--batch-size", "4"], "imitkd-generate", 2,
        r"^error: .*/s2t/test\.tsv: line 1 \(the header\) lacks the column\(s\) n_frames that fairseq's"),
    Row("ctc_transcribe.py of a text model", lambda c: ctc_argv(c, c.toy / "expert" / "checkpoint_best.pt"),
        "ctc_transcribe.py", 2, r"^error: .*/expert/checkpoint_best\.pt: a checkpoint of task translation, not a speech model"),
    Row("ctc_transcribe.py --max-tokens 0", lambda c: ctc_argv(c, c.toy / "expert" / "checkpoint_best.pt", "--max-tokens", "0"),
        "ctc_transcribe.py", 2, r"^error: --max-tokens must be ≥ 1 frame \(got 0\)$"),
    Row("no src_text column", lambda c: train_argv(c, drop_column(c, "src_text")), "imitkd-train", 2,
        r"^error: .*/s2t/(dev|train)\.tsv: no 'src_text' column \(columns: id, audio, n_frames, tgt_text, "
        r"speaker\); .*imit_kd_CE reads it$"),
    Row("empty src_text cell", empty_src_text, "imitkd-train", 2,
        r"^error: .*/s2t/train\.tsv: row 5 \(id=train_3\) has an empty 'src_text'; .*imit_kd_CE reads it$"),
    Row("--expert-src-column names no column", lambda c: train_argv(c, extra=["--expert-src-column", "asr_text"]),
        "imitkd-train", 2, r"^error: .*/s2t/(dev|train)\.tsv: no 'asr_text' column \(columns: .*\); .* reads it$"),
    # -- task flags
    Row("--eval-bleu-args not JSON (item 10a)", lambda c: train_argv(c, extra=[
        "--eval-bleu", "--eval-bleu-args", "{beam: 4"]), "imitkd-train", 2,
        r"^error: --eval-bleu-args: not valid JSON \(Expecting property name enclosed in double quotes at "
        r"character 2\) in '\{beam: 4'; write an object with quoted keys"),
    Row("--eval-bleu-args not an object", lambda c: train_argv(c, extra=["--eval-bleu", "--eval-bleu-args", "4"]),
        "imitkd-train", 2, r"^error: --eval-bleu-args: expected a JSON object"),
    Row("text arch without --student-src-column", text_arch, "imitkd-train", 2,
        r"^error: --arch transformer reads text: set --student-src-column"),
    Row("--student-src-dict not found", lambda c: text_arch(c, "imit_pipeline_nmt_training", [
        "--student-src-column", "src_text", "--student-src-dict", "dict.xx.txt"]), "imitkd-train", 2,
        r"^error: --student-src-dict: dictionary not found: .*/s2t/dict\.xx\.txt$"),
    Row("--student-src-dict malformed", lambda c: text_arch(c, "imit_pipeline_nmt_training", [
        "--student-src-column", "src_text", "--student-src-dict", student_src_dict(c, "hallo 3\nwelt\n")]),
        "imitkd-train", 2, r"^error: --student-src-dict: .*/s2t/dict\.xx\.txt:2 is not a fairseq dictionary "
        r"\(Incorrect dictionary format, expected '<token> <cnt> \[flags\]': \"welt\"\)$", before_model),
    Row("--student-src-dict empty", lambda c: text_arch(c, "imit_pipeline_nmt_training", [
        "--student-src-column", "src_text", "--student-src-dict", student_src_dict(c, "")]), "imitkd-train", 2,
        r"^error: --student-src-dict: .*/s2t/dict\.xx\.txt is an empty dictionary \(no symbols besides the special "
        r"ones\)$", before_model),
    # -- the data config (--config-yaml), checked before fairseq reads it
    Row("--config-yaml not found", lambda c: train_argv(c, extra=["--config-yaml", "nosuch.yaml"]), "imitkd-train", 2,
        r"^error: --config-yaml nosuch\.yaml: data config not found: .*/s2t/nosuch\.yaml \(a relative path", before_model),
    Row("--config-yaml not found (generate)", lambda c: generate_argv(c, "--config-yaml", "nosuch.yaml"),
        "imitkd-generate", 2, r"^error: --config-yaml nosuch\.yaml: data config not found"),
    Row("--config-yaml not valid YAML", lambda c: with_config(c, TOY_CONFIG + "bpe_tokenizer: {bpe: sentencepiece\n"
                                                                  "audio_root: /tmp\n"), "imitkd-train", 2,
        r"^error: .*/s2t/cfg\.yaml:5: not valid YAML \(.*\) \(--config-yaml\)$", before_model),
    Row("--config-yaml a list", lambda c: with_config(c, "- input_channels: 1\n"), "imitkd-train", 2,
        r"^error: .*/s2t/cfg\.yaml: a YAML list, not a mapping of keys", before_model),
    Row("--config-yaml empty", lambda c: with_config(c, ""), "imitkd-train", 2,
        r"^error: .*/s2t/cfg\.yaml: empty, not a mapping of keys", before_model),
    Row("config vocab_filename not found", lambda c: with_config(c, TOY_CONFIG.replace("dict.de", "nosuch")),
        "imitkd-train", 2, r"^error: .*/s2t/cfg\.yaml: vocab_filename: dictionary not found: .*/s2t/nosuch\.txt",
        before_model),
    Row("config sentencepiece_model not found", lambda c: with_config(c, TOY_CONFIG + "bpe_tokenizer:\n  bpe: "
                                                                          "sentencepiece\n  sentencepiece_model: x.model\n"),
        "imitkd-train", 2, r"^error: .*/s2t/cfg\.yaml: bpe_tokenizer\.sentencepiece_model: file not found: x\.model$",
        before_model),
    Row("config sentencepiece_model not a model", lambda c: with_config(c, TOY_CONFIG + "bpe_tokenizer:\n  bpe: "
                                                                            "sentencepiece\n  sentencepiece_model: dict.de.txt\n"),
        "imitkd-train", 2, r"^error: .*/s2t/cfg\.yaml: bpe_tokenizer\.sentencepiece_model .*/dict\.de\.txt: not a "
        r"sentencepiece model \(", before_model),
    Row("config transform unknown", lambda c: with_config(c, TOY_CONFIG + "transforms:\n  _train: [utterance_cmvnX]\n"),
        "imitkd-train", 2, r"^error: .*/s2t/cfg\.yaml: transforms\._train: unknown feature transform 'utterance_cmvnX' "
        r"\(fairseq has: .*utterance_cmvn\)$", before_model),
    Row("config audio_root not found", lambda c: with_config(c, TOY_CONFIG + f"audio_root: {c.tmp}/nosuchroot\n"),
        "imitkd-train", 2, r"^error: .*/s2t/cfg\.yaml: audio_root: no such directory: .*/nosuchroot$", before_model),
    Row("config input_feat_per_channel not the features' size", lambda c: with_config(c, TOY_CONFIG.replace(": 80", ": 40")),
        "imitkd-train", 2, r"^error: .*/s2t/dev\.tsv: line 2 \(id=dev_0, audio .*\): features of shape \(\d+, 80\), but "
        r"the data config cfg\.yaml says input_feat_per_channel 40 × input_channels 1 = 40 per frame$"),
    # -- the features each row names: files and zip bytes at load (every row), shape/frames/values when read
    Row("a later utterance with 40 features per frame", lambda c: train_argv(c, wide_row(c)), "imitkd-train", 2,
        r"^error: .*/s2t/train\.tsv: line 100 \(id=train_98, audio .*/train_100\.npy\): features of shape \(\d+, 40\), "
        r"but the data config config\.yaml says input_feat_per_channel 80 × input_channels 1 = 80 per frame$"),
    Row("a later utterance with 40 features (2 data-loader workers)", lambda c: train_argv(
        c, wide_row(c), extra=["--num-workers", "2"]), "imitkd-train", 2,
        r"^error: .*/s2t/train\.tsv: line 100 \(id=train_98, audio .*\): features of shape \(\d+, 40\), but .* = 80 per frame$"),
    Row("a later utterance with 40 features (generate, 1 worker)", lambda c: generate_argv(
        c, "--num-workers", "1", data=wide_row(c, "test", 7)), "imitkd-generate", 2,
        r"^error: .*/s2t/test\.tsv: line 7 \(id=test_5, audio .*\): features of shape \(\d+, 40\), but .* = 80 per frame$"),
    Row("a 1-D feature array (generate)", lambda c: generate_argv(c, data=bad_features(
        c, "test", 9, lambda f: f.reshape(-1))), "imitkd-generate", 2,
        r"^error: .*/s2t/test\.tsv: line 9 \(id=test_7, audio .*\): features of shape \(\d+,\), but .* = 80 per frame$"),
    Row("n_frames 10 times the features' frames", lambda c: train_argv(c, frames_off(c)), "imitkd-train", 2,
        r"^error: .*/s2t/train\.tsv: line 100 \(id=train_98, audio .*\): (\d+) feature frames, but its n_frames says "
        r"(?:\1)0; fairseq batches .* by n_frames: write the utterance's frame count$"),
    Row("a NaN in an utterance's features", lambda c: train_argv(c, nan_row(c)), "imitkd-train", 2,
        r"^error: .*/s2t/train\.tsv: line 100 \(id=train_98, audio .*\): features hold NaN or infinite values"),
    Row("zip offset off by 3 bytes (generate)", lambda c: generate_argv(c, data=zip_cell(
        c, "test", 6, lambda z, o, n: f"{z}:{o + 3}:{n}")), "imitkd-generate", 2,
        r"^error: .*/s2t/test\.tsv: line 6 \(id=test_4, audio .*/test\.zip:\d+:\d+\): bytes \d+\.\.\d+ of .*/test\.zip "
        r"are not a \.npy array \(they start with b'.*'\); is the offset off\? \(prep_s2t_data\.py writes the cells\)$"),
    Row("zip length 3 bytes short (generate)", lambda c: generate_argv(c, data=zip_cell(
        c, "test", 8, lambda z, o, n: f"{z}:{o}:{n - 3}")), "imitkd-generate", 2,
        r"^error: .*/s2t/test\.tsv: line 8 \(id=test_6, audio .*\): bytes \d+\.\.\d+ of .*/test\.zip are not a whole \.npy "
        r"array \(.*\); is the length off\?"),
    Row("zip offset past the end of the zip", lambda c: train_argv(c, zip_cell(
        c, "train", 50, lambda z, o, n: f"{z}:{Path(z).stat().st_size - 10}:{n}")), "imitkd-train", 2,
        r"^error: .*/s2t/train\.tsv: line 50 \(id=train_48\): audio '.*/train\.zip:\d+:\d+': bytes (\d+)\.\.\d+ lie outside "
        r".*/train\.zip \(\d+ bytes\); manifest and zip from different runs\? \(--train-subset train\)$", before_model),
    Row("zip offset not a number", lambda c: train_argv(c, zip_cell(c, "dev", 5, lambda z, o, n: f"{z}:{o}x:{n}")),
        "imitkd-train", 2, r"^error: .*/s2t/dev\.tsv: line 5 \(id=dev_3\): audio '.*/dev\.zip:\d+x:\d+': the offset and "
        r"the length \(bytes\) must be integers >= 0 and > 0 \(--valid-subset dev\)$", before_model),
    Row("zip not found", lambda c: train_argv(c, zip_cell(c, "train", 30, lambda z, o, n: f"{z}.old:{o}:{n}")),
        "imitkd-train", 2, r"^error: .*/s2t/train\.tsv: line 30 \(id=train_28\): audio '.*/train\.zip\.old:\d+:\d+': no "
        r"such file .*/train\.zip\.old \(--train-subset train\)$", before_model),
    Row("zip cell without a length (generate)", lambda c: generate_argv(c, data=zip_cell(
        c, "test", 4, lambda z, o, n: f"{z}:{o}")), "imitkd-generate", 2,
        r"^error: .*/s2t/test\.tsv: line 4 \(id=test_2\): audio '.*/test\.zip:\d+' is neither a "
        r"\.flac/\.npy/\.ogg/\.wav file nor ZIP:OFFSET:LENGTH$"),
    Row(".npy file not found", lambda c: train_argv(c, missing_npy(c)), "imitkd-train", 2,
        r"^error: .*/s2t/train\.tsv: line 40 \(id=train_38\): audio '.*/nosuch\.npy': no such file .*/nosuch\.npy "
        r"\(--train-subset train\)$", before_model),
    # -- criterion vs task, β
    Row("--beta out of range", lambda c: train_argv(c, extra=["--beta", "1.5"]), "imitkd-train", 2,
        r"^error: --beta must be in \[0, 1\], got 1\.5$"),
    Row("criterion with the wrong task", lambda c: [a if a != "speech_to_text_kd" else "speech_to_text"
                                                    for a in map(str, train_argv(c))], "imitkd-train", 2,
        r"^error: criterion imit_kd_CE needs --task speech_to_text_kd"),

    # -- checkpoints and experts (more, through subprocesses: tests/test_checkpoint_safety.py, test_expert_errors.py)
    Row("--expert checkpoint not found", lambda c: train_argv(c, extra=["--expert", c.tmp / "nosuch.pt"]),
        "imitkd-train", 2, r"^error: --expert: checkpoint not found: .*/nosuch\.pt$"),
    Row("--expert checkpoint truncated", lambda c: train_argv(c, extra=["--expert", truncated_expert(c)]),
        "imitkd-train", 2, r"^error: checkpoint .*/half\.pt is truncated or not a checkpoint: .*still being written"),
    Row("--expert a speech model for a text criterion", lambda c: train_argv(c, extra=[
        "--expert", c.toy / "student_kd" / "checkpoint_best.pt"]), "imitkd-train", 2,
        r"^error: --expert .* is a speech-to-text model .*: use --criterion imit_kd_ast or imit_kd_ast_pure_kd",
        needs=("toy_student",)),
    Row("--save-dir under a file", lambda c: train_argv(c, extra=["--save-dir", a_file(c) / "ckpt"]), "imitkd-train", 2,
        r"^error: --save-dir .*/a-file/ckpt: not a directory \(.*/a-file is a file\)$", before_model),
    Row("--save-dir a file", lambda c: train_argv(c, extra=["--save-dir", a_file(c)]), "imitkd-train", 2,
        r"^error: --save-dir .*/a-file: not a directory \(it is a file\)$", before_model),
    Row("--restore-file not found", lambda c: train_argv(c, extra=["--restore-file", c.tmp / "nosuch.pt"]),
        "imitkd-train", 2, r"^error: --restore-file .*/nosuch\.pt: checkpoint not found$", before_model),
    Row("resume a checkpoint of another arch", lambda c: resume_student(c, "--encoder-layers", "2"), "imitkd-train", 2,
        r"^error: cannot resume from .*/ckpt/checkpoint_last\.pt: its model does not fit the one these flags build "
        r"\(Missing key\(s\) in state_dict: .*\); use the flags it was trained with", needs=("student_ckpt",)),
    Row("resume under another criterion", resume_student, "imitkd-train", 2,
        r"^error: cannot resume from .*/ckpt/checkpoint_last\.pt: it was trained with the criterion "
        r"LabelSmoothedCrossEntropyCriterion, this run uses \w+; pass --reset-optimizer", needs=("student_ckpt",)),
    Row("--seed negative", lambda c: train_argv(c, extra=["--seed", "-1"]), "imitkd-train", 2,
        r"^error: --seed must be in \[0, 4294967295\], got -1$", before_model),
    Row("--max-tokens 0", lambda c: train_argv(c, extra=["--max-tokens", "0"]), "imitkd-train", 2,
        r"^error: --max-tokens must be >= 1, got 0$", before_model),
    Row("generate --path not found", lambda c: generate_argv(c, path=c.tmp / "nosuch.pt"), "imitkd-generate", 2,
        r"^error: --path .*/nosuch\.pt: checkpoint not found$"),
    Row("generate --path ensemble member missing", lambda c: generate_argv(c, path=f"{c.student_ckpt}:{c.tmp}/b.pt"),
        "imitkd-generate", 2, r"^error: --path .*\.pt:.*/b\.pt \(ensemble member .*/b\.pt\): checkpoint not found$"),
    Row("validate --path not found", lambda c: [s2t_copy(c), "--task", "speech_to_text_kd", "--config-yaml",
                                                "config.yaml", "--path", c.tmp / "nosuch.pt", "--cpu"],
        "imitkd-validate", 2, r"^error: --path .*/nosuch\.pt: checkpoint not found$"),
    Row("generate --beam 0", lambda c: generate_argv(c, "--beam", "0"), "imitkd-generate", 2,
        r"^error: --beam must be >= 1, got 0$"),
    Row("generate --max-len-a 0 --max-len-b 0", lambda c: generate_argv(c, "--max-len-a", "0", "--max-len-b", "0"),
        "imitkd-generate", 2, r"^error: --max-len-b 0 with --max-len-a 0 leaves no room for an output of --min-len 1 "
        r"token\(s\); set --max-len-b >= 1$"),
    Row("generate --results-path a file", lambda c: generate_argv(c, "--results-path", a_file(c)), "imitkd-generate",
        2, r"^error: --results-path .*/a-file: not a directory \(it is a file\)$"),
    Row("--max-tokens=0 (the = form)", lambda c: train_argv(c, extra=["--max-tokens=0"]), "imitkd-train", 2,
        r"^error: --max-tokens must be >= 1, got 0$", before_model),
    Row("--seed=-1 (the = form)", lambda c: train_argv(c, extra=["--seed=-1"]), "imitkd-train", 2,
        r"^error: --seed must be in \[0, 4294967295\], got -1$", before_model),
    Row("--max-tok 0 (an abbreviation: fairseq's parser refuses it)", lambda c: train_argv(c, extra=["--max-tok", "0"]),
        "imitkd-train", 2, r"^train: error: unrecognized arguments: --max-tok 0 \(train -h lists the flags\)$",
        only_the_error_line),
    Row("generate --beam=0 (the = form)", lambda c: generate_argv(c, "--beam=0"), "imitkd-generate", 2,
        r"^error: --beam must be >= 1, got 0$"),
    Row("generate --bea 0 (an abbreviation: fairseq's parser refuses it)", lambda c: generate_argv(c, "--bea", "0"),
        "imitkd-generate", 2, r"^generate: error: unrecognized arguments: --bea 0 \(generate -h lists the flags\)$",
        only_the_error_line),
    Row("generate --results-path=FILE (the = form)", lambda c: generate_argv(c, f"--results-path={a_file(c)}"),
        "imitkd-generate", 2, r"^error: --results-path .*/a-file: not a directory \(it is a file\)$"),
    Row("generate vocab_filename smaller than the checkpoint", lambda c: generate_argv(c, data=small_vocab(c)),
        "imitkd-generate", 2, r"^error: .*/s2t/config\.yaml: vocab_filename: .*/s2t/dict\.small\.txt has 13 symbols, "
        r"but the checkpoint .*/checkpoint_last\.pt has 16 target embeddings: point vocab_filename at the dictionary "
        r"it was trained with"),
    Row("validate vocab_filename smaller than the checkpoint", lambda c: [
        small_vocab(c), "--task", "speech_to_text_kd", "--config-yaml", "config.yaml", "--valid-subset", "dev",
        "--path", c.student_ckpt, "--cpu", "--batch-size", "4"], "imitkd-validate", 2,
        r"^error: .*/s2t/config\.yaml: vocab_filename: .*/s2t/dict\.small\.txt has 13 symbols, but the checkpoint "
        r".*/checkpoint_last\.pt has 16 target embeddings", needs=("student_ckpt",)),
    Row("resume with a vocab_filename smaller than the checkpoint", resume_small_vocab, "imitkd-train", 2,
        r"^error: .*/s2t/config\.yaml: vocab_filename: .*/s2t/dict\.small\.txt has 13 symbols, but the checkpoint "
        r".*/ckpt/checkpoint_last\.pt has 16 target embeddings", checkpoint_kept, needs=("student_ckpt",)),
    Row("--finetune-from-model with a vocab_filename smaller than it", lambda c: resume_small_vocab(
        c, "--finetune-from-model", c.student_ckpt), "imitkd-train", 2,
        r"^error: .*/s2t/config\.yaml: vocab_filename: .*/s2t/dict\.small\.txt has 13 symbols, but the checkpoint "
        r".*/checkpoint_last\.pt has 16 target embeddings", needs=("student_ckpt",)),
    Row("generate that fails keeps an earlier --results-path file", lambda c: generate_argv(
        c, "--results-path", earlier_results(c), data=small_vocab(c)), "imitkd-generate", 2,
        r"^error: .*/s2t/config\.yaml: vocab_filename: .*/s2t/dict\.small\.txt has 13 symbols", earlier_results_kept,
        needs=("student_ckpt",)),
    Row("validate without --max-tokens or --batch-size", lambda c: [
        s2t_copy(c), "--task", "speech_to_text_kd", "--config-yaml", "config.yaml", "--valid-subset", "dev",
        "--path", c.student_ckpt, "--cpu"], "imitkd-validate", 2,
        r"^error: imitkd-validate needs --max-tokens N or --batch-size N \(how much one batch holds\)$",
        needs=("student_ckpt",)),
    Row("generate a text model with a smaller source dictionary", mt_small_src_dict, "imitkd-generate", 2,
        r"^error: .*/mt-bin/dict\.en\.txt has 13 symbols, but the checkpoint .*/expert/checkpoint_best\.pt has 16 "
        r"source embeddings: use the data directory it was trained with"),
    Row("--load-pretrained-encoder-from not found", lambda c: train_argv(c, extra=[
        "--load-pretrained-encoder-from", c.tmp / "asr.pt"]), "imitkd-train", 2,
        r"^error: --load-pretrained-encoder-from: checkpoint not found: .*/asr\.pt$"),

    # -- criterion flags (items 3, 7, 8): checked at start-up, in one place (check_config)
    Row("--rollout-temperature 0 (item 3)", lambda c: train_argv(c, extra=["--rollout", "sample", "--rollout-temperature", "0"]), "imitkd-train", 2,
        r"^error: --rollout-temperature must be > 0 and finite \(use --rollout greedy for argmax rollouts\), got 0\.0$"),
    Row("--rollout-temperature -1", lambda c: train_argv(c, extra=["--rollout", "sample", "--rollout-temperature", "-1"]), "imitkd-train", 2,
        r"^error: --rollout-temperature must be > 0"),
    Row("--rollout-topk -3 (item 7)", lambda c: train_argv(c, extra=["--rollout", "sample", "--rollout-topk", "-3"]), "imitkd-train", 2,
        r"^error: --rollout-topk must be >= 0 \(0 = all tokens\), got -3$"),
    Row("--rollout-max-len-a/-b negative (item 7)", lambda c: train_argv(c, extra=["--rollout-max-len-a", "-1", "--rollout-max-len-b", "-5"]), "imitkd-train", 2,
        r"^error: --rollout-max-len-a/--rollout-max-len-b must be >= 0, finite and not both 0, got -1\.0 / -5$"),
    Row("--beta-sigmoid-slope negative (item 7)", lambda c: train_argv(c, extra=["--beta-schedule", "inverse_sigmoid", "--beta-sigmoid-slope", "-20"]), "imitkd-train", 2,
        r"^error: --beta-sigmoid-slope must be > 0 and finite \(β falls with it\), got -20\.0$"),
    Row("--beta-decay-updates -5 (item 8)", lambda c: train_argv(c, extra=["--beta-decay-updates", "-5"]), "imitkd-train", 2,
        r"^error: --beta-decay-updates must be positive, got -5$"),
    Row("--beta-hold-updates beyond the decay", lambda c: train_argv(c, extra=["--beta-hold-updates", "500", "--beta-decay-updates", "100"]), "imitkd-train", 2,
        r"^error: --beta-hold-updates 500 leaves nothing of the 100 decay updates"),
    Row("--kd-weight out of range", lambda c: train_argv(c, extra=["--kd-weight", "1.5"]), "imitkd-train", 2,
        r"^error: --kd-weight must be in \[0, 1\], got 1\.5$"),
    Row("--ctc-weight negative", lambda c: train_argv(c, extra=["--ctc-weight", "-1"]), "imitkd-train", 2,
        r"^error: --ctc-weight must be >= 0 and finite, got -1\.0$"),
    Row("--ctc-weight nan (NaN fails every range check)", lambda c: train_argv(c, extra=["--ctc-weight", "nan"]),
        "imitkd-train", 2, r"^error: --ctc-weight must be >= 0 and finite, got nan$"),
    Row("--rollout-temperature inf", lambda c: train_argv(c, extra=["--rollout", "sample", "--rollout-temperature", "inf"]),
        "imitkd-train", 2, r"^error: --rollout-temperature must be > 0 and finite .*, got inf$"),
    Row("--beta-base nan", lambda c: train_argv(c, extra=["--beta-base", "nan"]), "imitkd-train", 2,
        r"^error: --beta-base must be > 1 and finite, got nan$"),
    Row("--ctc-src-column names no column", lambda c: train_argv(c, extra=["--ctc-weight", "0.3", "--ctc-src-column", "asr_text"]), "imitkd-train", 2,
        r"^error: .*/s2t/(dev|train)\.tsv: no 'asr_text' column \(columns: .*\); --ctc-weight reads it$"),

    # -- create_wmt19_generated_dataset.py (items 6, 9)
    Row("repeated H-/D- pair after sample 2", append_earlier_pair_after_sample_2,
        "create_wmt19_generated_dataset.py", 2,
        r"^create_wmt19_generated_dataset\.py: error: .*/expert\.log:\d+: duplicate H- line for id \d+ "
        r"\(first at line \d+, not an n-best list\); concatenated or repeated fairseq-generate output\?$",
        names_repeated_pair),
    Row("grep -h of two logs (40 hypotheses, 20 ids)", lambda c: grep_two_logs(c, "-h"),
        "create_wmt19_generated_dataset.py", 2,
        r"error: .*/c\.log:41: duplicate H- line for id \d+ \(first at line 1, not an n-best list\)", nothing_written),
    Row("grep of two logs (file-name prefixes)", grep_two_logs, "create_wmt19_generated_dataset.py", 2,
        r"error: .*/c\.log:1: line starts with a file name \('a\.log'\): output of grep over several logs\?",
        nothing_written),
    Row("log not found", lambda c: ["-d", gd_inputs(c)[0], "-o", c.tmp / "nosuch.log", "-O", c.tmp / "out.tsv"],
        "create_wmt19_generated_dataset.py", 2,
        r"error: .*/nosuch\.log: cannot read fairseq-generate log: .*No such file", nothing_written),
    Row("manifest not UTF-8 (dataset script)", gd_manifest_not_utf8, "create_wmt19_generated_dataset.py", 2, r"error: .*/test\.tsv:9: not UTF-8; re-encode", nothing_written),
    Row("--missing-ids naming the manifest", lambda c: gd_argv(c) + ["--missing-ids", c.tmp / "test.tsv"],
        "create_wmt19_generated_dataset.py", 2,
        r"error: --missing-ids .*/test\.tsv: the same file as -d/--dataset .*/test\.tsv, which it would overwrite$",
        manifest_kept),
    Row("-o and -a the same log", lambda c: gd_argv(c) + ["-a", c.tmp / "expert.log"],
        "create_wmt19_generated_dataset.py", 2,
        r"error: -o/--output .*/expert\.log and -a/--audiotranscripts .*/expert\.log are the same log", nothing_written),
    Row("hypothesis over the csv field limit", gd_long_hypothesis, "create_wmt19_generated_dataset.py", 2,
        r"error: .*/expert\.log:\d+: hypothesis of id \d+ has \d+ characters, more than a manifest field may hold "
        r"\(131072", names_long_hypothesis_line),
    Row("SIGTERM mid-write", gd_argv,
        "create_wmt19_generated_dataset.py + SIGTERM mid-write", 128 + signal.SIGTERM,
        r"^create_wmt19_generated_dataset\.py: error: interrupted by SIGTERM; temporary files removed$",
        cleaned_up_after_signal),
    Row("SIGHUP mid-write", gd_argv,
        "create_wmt19_generated_dataset.py + SIGHUP mid-write", 128 + signal.SIGHUP,
        r"error: interrupted by SIGHUP; temporary files removed$", cleaned_up_after_signal),
    # -- prep_s2t_data.py (item 12: one sample rate)
    Row("audio file missing", lambda c: prep_argv(c, tsv_layout(c, drop_audio=1)), "prep_s2t_data.py", 2,
        r"^error: .*/in/train\.tsv:3: audio file not found: .*/u1\.wav$"),
    Row("--out-dir under a file", out_dir_under_a_file, "prep_s2t_data.py", 2,
        r"^error: .*/a-file/out: cannot create the output directory \(Not a directory\)$"),
    Row("--sample-rate not a rate", lambda c: prep_argv(c, tsv_layout(c), "--sample-rate", "0"), "prep_s2t_data.py",
        2, r"^error: --sample-rate must be an integer of at least 1000 \(Hz\), got 0$"),
    Row("resume with another --sample-rate", prepared_at_16k, "prep_s2t_data.py", 2,
        r"^error: --sample-rate 8000: the features in .*/out were computed at 16000 Hz \(.*/out/config\.yaml\); "
        r"use --sample-rate 16000, another --out-dir or --overwrite$", features_kept),
    # -- build_ddtp_st.py (item 11: the apt source comes from the system's configuration)
    Row("no Debian main source in the apt configuration", lambda c: apt_root(
        c, "deb [arch=amd64] file:/srv/mirror/ubuntu noble main universe\n", "sources.list"),
        "build_ddtp_st.fetch_translations", 2,
        r"^error: no Debian 'main' deb source in .*/root/etc/apt/sources\.list or .*sources\.list\.d/\*\.list\|"
        r"\*\.sources \(main sources found: file:/srv/mirror/ubuntu noble \(.*sources\.list:1\)\); add one, "
        r"or pass --translations-dir$"),
    Row("Signed-By keyring of the source missing", lambda c: apt_root(
        c, "Types: deb\nURIs: file:/srv/mirror/debian\nSuites: trixie\nComponents: main\n"
           f"Signed-By: {c.tmp}/no-such-keyring.gpg\n"), "build_ddtp_st.fetch_translations", 2,
        r"^error: .*/no-such-keyring\.gpg \(Signed-By of .*/extra\.sources:1\) missing: apt-get install -y "
        r"debian-archive-keyring$"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_bad_input_gives_one_line(row, toy, expert_log, request, tmp_path, monkeypatch, capsys):
    ctx = SimpleNamespace(toy=toy, tmp=tmp_path, capsys=capsys, expert_log=expert_log,
                          models_built=0)
    if row.command == "imitkd-generate":
        ctx.student_ckpt = request.getfixturevalue("student_ckpt")
    for name in row.needs:
        setattr(ctx, name, request.getfixturevalue(name))
    build_model = SpeechToTextTask.build_model

    def counting_build_model(self, *args, **kwargs):
        ctx.models_built += 1
        return build_model(self, *args, **kwargs)

    monkeypatch.setattr(SpeechToTextTask, "build_model", counting_build_model)
    argv = row.build(ctx)
    status, err = COMMANDS[row.command](argv, ctx)
    errors = [line for line in err.splitlines() if ERROR_LINE.match(line)]
    assert status == row.status and len(errors) == 1 and "Traceback" not in err, (status, err[-3000:])
    assert re.search(row.message, errors[0]), (row.message, errors[0])
    ctx.line, ctx.err = errors[0], err
    if row.check is not None:
        row.check(ctx)


def test_every_item_of_issue_12_has_a_row():
    """The table covers the issue's items (a row removed by accident fails here)."""
    names = " | ".join(r.name for r in ROWS)
    for needle in ("not UTF-8 (train)", "repeated H-/D- pair", "grep -h of two logs", "SIGTERM mid-write",
                   "--eval-bleu-args not JSON", "no Debian main source", "another --sample-rate",
                   "no src_text column", "empty src_text cell", "--beta out of range", "wrong task",
                   "--rollout-temperature 0", "--rollout-topk -3", "--rollout-max-len-a/-b negative",
                   "--beta-sigmoid-slope negative", "--beta-decay-updates -5", "--expert checkpoint truncated",
                   "speech model for a text criterion"):
        assert needle in names, needle
