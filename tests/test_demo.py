"""The one-command demo (examples/imitkd/run_demo.py, ``make demo``), end to end on the DDTP-ST ci corpus.

The slow test runs every stage with tiny update counts (expert and ASR training side by side, the ASR
transcripts and the KDT manifest, the six students with the ASR encoder, beam-search evaluation,
p-values, table, plot) and checks what a user relies on: the table has every method with numeric
BLEU/chrF and p-values, the PNG is valid, the students started from the ASR encoder and kept CTC, the
KD students used the expert, KDT students read ASR transcripts, β decayed in the ImitKD runs, every
test sentence was translated, and a second run skips every stage.
Needs espeak-ng and Debian's package index, like tests/test_ddtp_corpus.py (a missing piece fails with the fix).
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ddtp_fixture import build_ci_corpus
from imitkd_data.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "imitkd" / "run_demo.py"
METHODS = ("NLL (label-smoothed CE)", "word-level KD", "ImitKD-full (imit_kd_CE)", "ImitKD-optimal (imit_kd)",
           "KDT (word KD, expert reads ASR)", "ImitKDT (ImitKD-full, expert reads ASR)")
KEYS = ("nll", "word_kd", "imit_kd_CE", "imit_kd", "kdt", "imitkdt")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_demo(*args, timeout=600, env=None):
    return subprocess.run([sys.executable, str(DEMO), *map(str, args)], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, env=env)


def demo_module():
    if str(DEMO.parent) not in sys.path:
        sys.path.insert(0, str(DEMO.parent))
    import run_demo as module

    return module


def table_rows(md: str):
    """{method: [cells]} of the markdown table in results.md."""
    rows = {}
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| method"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_help_describes_the_stages():
    out = run_demo("--help", timeout=60)
    assert out.returncode == 0
    for word in ("--size", "--out", "--force", "--expert-updates", "--student-updates", "imit_kd_CE", "word_kd"):
        assert word in out.stdout


def test_missing_corpus_is_one_line_error(tmp_path):
    out = run_demo("--size", "ci", "--out", tmp_path / "demo", "--corpus", tmp_path / "nothing", timeout=120)
    assert out.returncode == 2
    errors = [line for line in out.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "train.tsv missing" in errors[0] and "Traceback" not in out.stdout


def test_corpus_without_asr_extra_is_one_line_error_before_training(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("train.tsv", "test.tsv", "dev.tsv", "config.yaml", "dict.txt", "spm_joint.model"):
        (corpus / name).write_text("")
    out = run_demo("--size", "ci", "--out", tmp_path / "demo", "--corpus", corpus, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stdout and "imitkd-train" not in out.stdout
    errors = [line for line in out.stdout.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {corpus}: train_asr_extra.tsv missing: the ASR stage reads 30 English-only utterances (build "
                      "the corpus with build_ddtp_st.py --asr-extra 30, or pass --asr-extra 0)"]
    out = run_demo("--size", "ci", "--out", tmp_path / "demo", "--asr-extra", "-1", timeout=120)
    assert out.returncode == 2 and out.stdout.strip().splitlines()[-1] == "error: --asr-extra must be >= 0, got -1"


def test_unknown_decoding_is_one_line_error(tmp_path):
    out = run_demo("--size", "ci", "--out", tmp_path / "demo", "--decodings", "beam5,beam9", timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stdout
    errors = [line for line in out.stdout.splitlines() if line.startswith("error:")]
    assert errors == ["error: --decodings: unknown beam9 (choose from beam5, beam5-lenpen2, greedy)"]


def test_out_that_cannot_be_created_is_one_line_error(tmp_path):
    (tmp_path / "a-file").write_text("")
    out = run_demo("--size", "ci", "--out", tmp_path / "a-file" / "demo", timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stdout
    assert [line for line in out.stdout.splitlines() if line.startswith("error:")] == [
        f"error: --out {tmp_path / 'a-file' / 'demo'}: cannot create the output directory (Not a directory)"]


@pytest.mark.parametrize("seeds, message", [
    ("2,x", "error: --student-seeds: comma-separated integers expected, got '2,x'"),
    ("2,1", "error: --student-seeds 2,1: each seed once, and not --seed (1)"),
    ("3,3", "error: --student-seeds 3,3: each seed once, and not --seed (1)"),
])
def test_bad_student_seeds_are_one_line_errors(tmp_path, seeds, message):
    out = run_demo("--size", "ci", "--out", tmp_path / "demo", "--student-seeds", seeds, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stdout
    assert [line for line in out.stdout.splitlines() if line.startswith("error:")] == [message]


@pytest.mark.parametrize("flags, message", [
    (("--seed-methods", "nll,seqkd", "--student-seeds", "2"),
     "error: --seed-methods: seqkd not among the students (nll, word_kd, imit_kd_CE, imit_kd, kdt, imitkdt)"),
    (("--seed-methods", ",", "--student-seeds", "2"), "error: --seed-methods: no students given"),
    (("--seed-methods", "nll"), "error: --seed-methods: it needs --student-seeds"),
])
def test_bad_seed_methods_are_one_line_errors(tmp_path, flags, message):
    out = run_demo("--size", "ci", "--out", tmp_path / "demo", *flags, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stdout
    assert [line for line in out.stdout.splitlines() if line.startswith("error:")] == [message]
    assert not (tmp_path / "demo").exists()  # nothing built before the flags are checked


@pytest.mark.parametrize("flags, message", [
    (("--threads", "-1"), "error: --threads must be >= 0 (0 = torch's choice), got -1"),
    (("--workers", "0"), "error: --workers must be >= 1, got 0"),
    (("--max-len", "0"), "error: --max-len must be >= 1, got 0"),
    (("--beta-hold", "-5"), "error: --beta-hold must be >= 0, got -5"),
    (("--expert-text-pairs", "-5"), "error: --expert-text-pairs must be >= -1 (-1 = the whole DDTP train pool), got -5"),
    (("--seed", "-1"), "error: --seed must be >= 0, got -1"),
    (("--student-seeds", "2,-3"), "error: --student-seeds 2,-3: seeds must be >= 0"),
    (("--methods", "nll,word_kd,nll"), "error: --methods: nll given twice"),
    (("--methods", ","), "error: --methods: no students given (choose from nll, word_kd, imit_kd_CE, imit_kd, kdt, "
                         "imitkdt, seqkd, imitkd_star)"),
    (("--decodings", "greedy,greedy"), "error: --decodings: greedy given twice"),
    (("--seed-methods", "nll,nll", "--student-seeds", "2"), "error: --seed-methods: nll given twice"),
])
def test_out_of_range_and_repeated_flags_are_one_line_errors_at_start_up(tmp_path, flags, message):
    """(They used to be accepted, and most failed only after the ASR model and the expert had trained.)"""
    out = run_demo("--size", "ci", "--out", tmp_path / "demo", *flags, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stdout
    assert [line for line in out.stdout.splitlines() if line.startswith("error:")] == [message]
    assert not (tmp_path / "demo").exists()


def test_seed_methods_limit_only_the_further_seeds(tmp_path):
    """``--seed-methods`` picks which students ``--student-seeds`` trains again; every student keeps its
    seed-1 job (the main table's rows)."""
    demo = demo_module()
    args = demo.get_parser().parse_args(["--out", str(tmp_path)])
    args.student_seeds, args.seed_methods = (2,), ("nll", "imit_kd_CE")
    args.decodings, args.splits = demo.comma_list(args.decodings), ("test", "test_unseen")  # (as main sets them)
    jobs = demo.training_graph(args, demo.PRESETS["small"], tmp_path / "corpus", demo.Clock())
    students = [name for name in jobs if name.split(".")[0] in KEYS]
    assert students == ["imit_kd_CE", "imit_kd", "imitkdt", "word_kd", "kdt", "nll", "imit_kd_CE.seed2", "nll.seed2"]
    # adding seeds later reuses the seed-1 runs: their commands (the keys their done-records hold) do not change
    P, corpus, ckpt = demo.PRESETS["small"], tmp_path / "corpus", tmp_path / "checkpoint_best.pt"
    corpus.mkdir()
    (corpus / "config.yaml").write_text("input_feat_per_channel: 80\nvocab_filename: dict.txt\n")
    without = demo.get_parser().parse_args(["--out", str(tmp_path)])
    without.out = args.out = tmp_path
    for key in KEYS:
        cmds = [demo.student_cmd(a, P, corpus, ckpt, ckpt, demo.METHODS[key], tmp_path / key, a.seed)
                for a in (without, args)]
        assert cmds[0] == cmds[1] and "--seed" in map(str, cmds[0])


def test_forked_runs_give_what_a_subprocess_gives_and_stop(tmp_path):
    """The demo forks its decodings and training runs from one process that imported torch and fairseq
    once: the same output and exit status as the subprocess it replaces, and ``Children.stop`` can end one."""
    import multiprocessing
    import signal
    import time

    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("no forkserver on this platform (the demo runs subprocesses there)")
    demo = demo_module()
    import forked_runs

    cmd = [sys.executable, demo.CTC_SCRIPT, tmp_path, "--config-yaml", tmp_path / "config.yaml", "--gen-subset",
           "dev_asr", "--path", tmp_path / "missing.pt", "--cpu"]
    assert forked_runs.forkable(cmd) and forked_runs.forkable([demo._exe("imitkd-train"), "data"])
    assert not forked_runs.forkable([sys.executable, DEMO]) and not forked_runs.forkable([demo._exe("imitkd-preprocess")])
    forked = demo.CHILDREN.run_decoding(cmd, threads=1)
    plain = demo.CHILDREN.run(cmd, env=demo._env(1), cwd=REPO)
    assert forked.returncode == plain.returncode != 0
    assert forked.stdout.strip().splitlines()[-1] == plain.stdout.strip().splitlines()[-1], forked.stdout[-2000:]

    # a child starts with what the forkserver imported, torch's lazily imported compiler stack included
    # (each training run imported it when it built its optimizer: ≈ 1.2 s of a core)
    script = tmp_path / "preloaded.py"
    script.write_text("import sys\nprint(sorted(m for m in sys.argv[1:] if m in sys.modules))\n")
    run = forked_runs.ForkedRun([sys.executable, script, *forked_runs.PRELOAD], tmp_path, 1)
    out, _ = run.communicate()
    assert run.returncode == 0 and "torch._dynamo" in forked_runs.PRELOAD
    assert out.strip() == str(sorted(forked_runs.PRELOAD)), out

    script = tmp_path / "slow.py"
    script.write_text("import time\nprint('started', flush=True)\ntime.sleep(120)\n")
    run = forked_runs.ForkedRun([sys.executable, script], tmp_path, 1)
    deadline = time.time() + 60
    while "started" not in Path(run.out_path).read_text() and time.time() < deadline:
        time.sleep(0.1)
    assert run.poll() is None
    run.terminate()
    out, _ = run.communicate()
    assert run.returncode == -signal.SIGTERM and out.strip() == "started"


def test_forked_runs_each_get_their_exit_status_from_several_threads(tmp_path):
    """The demo's lanes are threads that start, poll and wait for forked runs at once. The forkserver sends a
    child's exit status once: read by another thread's ``Process.start`` (which polls every ended child), it
    left the waiting thread with EOF, i.e. exit status 255 ("decoding: imitkdt on test failed (exit 255)" after
    a complete decoding; 20 of 600 runs of this pattern before ``_STATUS_LOCK``)."""
    import collections
    import multiprocessing
    import threading
    import time

    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("no forkserver on this platform (the demo runs subprocesses there)")
    demo_module()
    import forked_runs

    script = tmp_path / "exit3.py"
    script.write_text("import sys\nsys.exit(3)\n")
    codes = collections.Counter()

    def polling(n):  # as Children.follow (training runs)
        for _ in range(n):
            run = forked_runs.ForkedRun([sys.executable, script], tmp_path, 1)
            while run.poll() is None:
                time.sleep(0.001)
            codes[run.returncode] += 1

    def waiting(n):  # as Children.run_decoding
        for _ in range(n):
            run = forked_runs.ForkedRun([sys.executable, script], tmp_path, 1)
            run.communicate()
            codes[run.returncode] += 1

    threads = [threading.Thread(target=f, args=(80,)) for f in (polling, waiting, waiting)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == {3: 240}, codes


DRIVER = """
import os, sys
sys.path.insert(0, {moddir!r})
import forked_runs

if __name__ == "__main__":
    for i in range(2):
        run = forked_runs.ForkedRun([sys.executable, {script!r}], {moddir!r}, 1)
        out, _ = run.communicate()
        print(i, run.returncode, out.strip().splitlines()[-1:])
        if i == 0:
            os.remove(os.path.join({moddir!r}, "forked_runs.py"))
"""


def test_forked_runs_survive_their_module_leaving_the_checkout(tmp_path):
    """The forkserver preloads ``forked_runs`` (Python 3.11's forkserver ignores the sys.path it is given,
    so the demo puts the module's directory on its PYTHONPATH): a fork after the file was renamed or
    removed under a running demo (a ``git pull``) still starts."""
    import multiprocessing
    import shutil

    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("no forkserver on this platform")
    moddir = tmp_path / "mod"
    moddir.mkdir()
    shutil.copy(DEMO.parent / "forked_runs.py", moddir / "forked_runs.py")
    (moddir / "hello.py").write_text("print('hello')\n")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(moddir=str(moddir), script=str(moddir / "hello.py")))
    out = subprocess.run([sys.executable, str(driver)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.splitlines() == ["0 0 ['hello']", "1 0 ['hello']"], out.stdout + out.stderr[-3000:]


@pytest.mark.slow
def test_forked_training_equals_a_subprocess(toy, tmp_path):
    """A training run forked by the demo (``run_logged``) writes the checkpoint a subprocess writes, to the
    bit, appends its output to the log and prints its progress lines; a failing one raises DemoError
    naming the log."""
    import toydata

    demo = demo_module()
    saved = {}
    for how in ("forked", "subprocess"):
        args = toydata.student_train_args(toy, "imit_kd_CE", tmp_path / how, 4,
                                          ["--log-format", "json", "--log-interval", "1", "--expert-dtype", "fp32"])
        cmd = [demo._exe("imitkd-train"), *args]
        log = tmp_path / f"{how}.log"
        log.write_text("earlier run\n")
        seen = []
        clock = demo.Clock()
        clock.say = seen.append
        if how == "subprocess":
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(demo.forked_runs, "forkable", lambda cmd: False)
                demo.run_logged(cmd, log, clock, "student", threads=1)
        else:
            demo.run_logged(cmd, log, clock, "student", threads=1)
        text = log.read_text()
        assert text.startswith("earlier run\n$ ") and "done training" in text
        assert [int(m) for m in re.findall(r"\[student\] update (\d+) loss", "\n".join(seen))] == [1, 2, 3, 4]
        saved[how] = torch.load(tmp_path / how / "checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]
    assert saved["forked"].keys() == saved["subprocess"].keys()
    assert all(torch.equal(saved["forked"][k], saved["subprocess"][k]) for k in saved["forked"])
    with pytest.raises(demo.DemoError, match=r"student failed \(exit 2\).*full log: .*bad\.log"):
        demo.run_logged([demo._exe("imitkd-train"), *args, "--criterion", "no_such"], tmp_path / "bad.log",
                        demo.Clock(), "student", threads=1)


def test_missing_espeak_is_one_line_error(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    out = run_demo("--size", "ci", "--out", tmp_path / "demo", timeout=120, env={**os.environ, "PATH": str(empty)})
    assert out.returncode == 2 and "Traceback" not in out.stdout
    errors = [line for line in out.stdout.splitlines() if line.startswith("error:")]
    assert errors == ["error: espeak-ng not found: run `apt-get install -y espeak-ng` (it speaks the corpus)"]


@pytest.fixture(scope="session")  # (the end-to-end test runs first, apart from the rest of this module)
def ddtp_ci(tmp_path_factory):
    try:
        return build_ci_corpus(tmp_path_factory.mktemp("ddtp"))
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


def test_evaluation_splits_follow_the_preset_and_the_corpus(tmp_path):
    """test_unseen_engine (the test sentences by flite, which no training utterance comes from) is scored where the
    preset names an unseen_engine (small, medium) or a --corpus has it; --no-unseen scores test alone."""
    demo = demo_module()
    P = demo.PRESETS
    splits = lambda size, corpus=None, no_unseen=False: demo.evaluation_splits(  # noqa: E731
        SimpleNamespace(corpus=corpus, no_unseen=no_unseen), P[size])
    assert splits("small") == splits("medium") == ("test", "test_unseen", "test_unseen_engine")
    assert splits("ci") == ("test", "test_unseen") and splits("small", no_unseen=True) == ("test",)
    (tmp_path / "test_unseen.tsv").write_text("")
    assert splits("small", corpus=tmp_path) == ("test", "test_unseen")
    (tmp_path / "test_unseen_engine.tsv").write_text("")
    assert splits("ci", corpus=tmp_path) == ("test", "test_unseen", "test_unseen_engine")
    (tmp_path / "test_unseen.tsv").unlink()
    assert splits("small", corpus=tmp_path) == ("test",)


@pytest.mark.slow
def test_demo_end_to_end_ci(ddtp_ci, tmp_path, capsys):
    out_dir = tmp_path / "demo"
    # (with a further seed of the NLL student: the seed table below; one invocation, one forkserver start)
    args = ["--size", "ci", "--out", out_dir, "--corpus", ddtp_ci, "--expert-updates", 30, "--asr-updates", 16,
            "--student-updates", 8, "--max-len", 40, "--decodings", "beam5,greedy", "--seed-methods", "nll",
            "--student-seeds", 2]
    first = run_demo(*args)
    assert first.returncode == 0, first.stdout[-5000:]
    log = first.stdout

    # the table: six methods (+ the expert ceiling), numeric BLEU and chrF on test and test_unseen,
    # paired-bootstrap p-values against NLL, the ASR WER
    md = (out_dir / "results.md").read_text()
    assert md.strip() in log  # printed as well
    rows = table_rows(md.split("## Student seeds")[0])
    for method in METHODS:
        assert method in rows, md
        bleu, chrf, bleu_u, chrf_u = (float(x) for x in rows[method][:4])
        assert 0 <= bleu <= 100 and 0 <= chrf <= 100 and 0 <= bleu_u <= 100 and 0 <= chrf_u <= 100
        p_test, p_unseen = rows[method][4:6]
        assert (p_test, p_unseen) == ("–", "–") if method.startswith("NLL") else 0 <= float(p_test) <= 1
        assert re.fullmatch(r"(beam5|greedy) \([\d.]+\)", rows[method][6])  # the decoding chosen on dev
        assert re.fullmatch(r"\d+:\d\d", rows[method][-1])  # train time
    assert any(k.startswith("expert") for k in rows)
    assert re.search(r"WER [\d.]+ % on test, [\d.]+ % on test_unseen", md)
    assert re.search(r"ImitKD-full vs word-KD: p = [\d.]+ \(test\)", md)
    results = json.loads((out_dir / "results.json").read_text())
    assert [r["criterion"] for r in results["rows"]] == ["nll", "word_kd", "imit_kd_CE", "imit_kd", "word_kd", "imit_kd_CE"]
    assert set(results["asr_wer"]) == {"test", "test_unseen"}

    # the plot
    png = (out_dir / "demo.png").read_bytes()
    assert png[:8] == PNG_MAGIC and png[12:16] == b"IHDR" and len(png) > 10_000

    # every student starts from the ASR encoder and keeps CTC on the transcript; the KD students read
    # the expert (its accuracy on the gold prefixes is logged); KDT students train on ASR transcripts
    students = out_dir / "students"
    for key in KEYS:
        train_log = (students / key / "train.log").read_text()
        assert "loaded pretrained encoder from" in train_log and '"ctc_loss"' in train_log
        assert ('"expert_accuracy"' in train_log) == (key != "nll")
    for key in ("kdt", "imitkdt"):
        assert "--train-subset train_kdt" in (students / key / "train.log").read_text()
    # the ASR model also trained on the corpus' English-only utterances (the ci preset's asr_extra)
    n_extra = len(read_manifest(ddtp_ci / "train_asr_extra.tsv"))
    assert n_extra == demo_module().PRESETS["ci"]["asr_extra"] > 0
    asr_log = (out_dir / "asr" / "train.log").read_text()
    assert "--train-subset train_asr,train_asr_extra " in asr_log
    # ... with the ci preset's linear learning-rate decay (asr_lr_schedule): warm-up to the peak, 0 at the last update
    assert "--lr-scheduler polynomial_decay" in asr_log
    lrs = [float(x) for x in re.findall(r'"lr": "?([0-9.e-]+)', asr_log)]
    assert len(lrs) >= 3 and max(lrs) > 1e-3 and lrs[-1] < 0.05 * max(lrs)
    assert f"and {n_extra} English-only ones (train_asr_extra.tsv)" in md
    # the students' encoder and the transcripts come from the mean of the ASR run's last interval checkpoints
    # (the ci preset's asr_average: 2 of them), named in its done-record and in the table's notes
    averaged = json.loads((out_dir / "asr" / "done.json").read_text())["averaged"]
    assert len(averaged) == demo_module().PRESETS["ci"]["asr_average"] == 2
    # (the interval checkpoints fairseq kept, oldest first: at an epoch's end it writes none, so not every 4th update)
    kept = sorted((p.name for p in (out_dir / "asr").glob("checkpoint_*_*.pt")), key=lambda n: int(n[:-3].split("_")[2]))
    assert averaged == kept and len({int(n[:-3].split("_")[2]) for n in kept}) == 2
    assert f"the mean of its checkpoints {', '.join(averaged)}." in md
    states = [torch.load(out_dir / "asr" / name, map_location="cpu", weights_only=False)["model"]
              for name in (*averaged, "checkpoint_avg.pt")]
    name = "encoder.transformer_layers.0.fc1.weight"
    assert not torch.equal(states[0][name], states[1][name])
    assert torch.allclose(states[2][name], (states[0][name] + states[1][name]) / 2, atol=1e-6)
    for key in KEYS:
        assert f"--load-pretrained-encoder-from {out_dir / 'asr' / 'checkpoint_avg.pt'} " in (students / key / "train.log").read_text()
    assert f"--path {out_dir / 'asr' / 'checkpoint_avg.pt'} " in (out_dir / "transcripts" / "asr.dev.ctc.log").read_text()
    gold = [r["src_text"] for r in read_manifest(ddtp_ci / "train.tsv")]
    asr = [r["src_text"] for r in read_manifest(ddtp_ci / "train_kdt.tsv")]
    assert len(asr) == len(gold) and asr != gold  # the ASR model's transcripts, row by row
    # dev was transcribed three ways (attention beam search, CTC best path, joint); the lowest dev WER transcribed train
    chosen = json.loads((out_dir / "transcripts" / "decoding.json").read_text())
    assert set(chosen["dev_wer"]) == {"beam", "ctc", "joint"}
    assert chosen["decoding"] == min(("beam", "ctc", "joint"), key=lambda d: chosen["dev_wer"][d])
    train_log = out_dir / "transcripts" / ("asr.train.log" if chosen["decoding"] == "beam" else f"asr.train.{chosen['decoding']}.log")
    assert asr == demo_module().parse_hypotheses(train_log.read_text(), len(gold), train_log)
    assert (f"chosen on dev: dev WER {chosen['dev_wer']['beam']:.1f} % (beam) vs {chosen['dev_wer']['ctc']:.1f} % (ctc) vs "
            f"{chosen['dev_wer']['joint']:.1f} % (joint)") in md
    # ... and dev_unseen (the dev sentences by held-out voices) with the chosen decoding: its WER is reported
    unseen_log = Path(str(train_log).replace("asr.train.", "asr.dev_unseen."))
    unseen_refs = [r["src_text"] for r in read_manifest(ddtp_ci / "dev_unseen.tsv")]
    unseen_hyps = demo_module().parse_hypotheses(unseen_log.read_text(), len(unseen_refs), unseen_log)
    assert chosen["dev_unseen_wer"] == round(demo_module().word_error_rate(unseen_hyps, unseen_refs), 2) > 0
    assert f"; dev_unseen (held-out voices) {chosen['dev_unseen_wer']:.1f} %" in md

    # ... and β decayed in the ImitKD run (exponential schedule, 1 → 1/200), with rollouts replacing gold prefixes
    train, dev = demo_module().curves(students / "imitkdt" / "train.log")
    betas = [r["beta"] for r in train if r["beta"] is not None]
    assert len(betas) >= 3 and betas[0] > 0.5 and betas[-1] < 0.1 and betas == sorted(betas, reverse=True)
    assert max(r["rollout_frac"] for r in train) > 0.5
    assert dev and all(r["nll"] is not None for r in dev)
    # every validation decoded dev greedily (the BLEU curve), and the ci preset picks checkpoints by it
    assert all(r["bleu"] is not None and 0 <= r["bleu"] <= 100 for r in dev)
    assert "--best-checkpoint-metric bleu --maximize-best-checkpoint-metric" in (students / "imitkdt" / "train.log").read_text()
    for row in results["rows"]:  # the table names the update of the checkpoint it scored: the best dev BLEU
        curve = dict(row["dev_bleu_curve"])  # update -> greedy dev BLEU
        assert row["checkpoint_update"] in curve
        assert curve[row["checkpoint_update"]] == max(curve.values())
        assert rows[row["method"]][-2] == str(row["checkpoint_update"])
    wkd_train, _ = demo_module().curves(students / "word_kd" / "train.log")
    assert {r["beta"] for r in wkd_train} == {1.0}

    # every test sentence was translated, by every student and by the expert; each student decoded dev
    # both ways, test with the decoding of its best dev BLEU (beam 5 on a tie) and with beam 5
    n_test = len((ddtp_ci / "test.tsv").read_text(encoding="utf-8").splitlines()) - 1
    assert n_test == 20
    evals = out_dir / "eval"
    for row in results["rows"]:
        key, dev = row["key"], row["dev_bleu"]
        for decoding, stem in (("beam5", key), ("greedy", f"{key}.greedy")):
            assert json.loads((evals / f"{stem}.dev.json").read_text())["bleu"] == dev[decoding]
        # ... among the decodings whose dev translations are ≥ 95 % distinct (all, if none is)
        dev_hyps = {d: (evals / f"{s}.dev.hyp").read_text(encoding="utf-8").splitlines()
                    for d, s in (("beam5", key), ("greedy", f"{key}.greedy"))}
        assert row["dev_distinct"] == {d: round(len(set(h)) / len(h), 4) for d, h in dev_hyps.items()}
        eligible = [d for d in ("beam5", "greedy") if row["dev_distinct"][d] >= 0.95] or ["beam5", "greedy"]
        assert row["decoding"] == max(eligible, key=lambda d: dev[d])
        chosen = key if row["decoding"] == "beam5" else f"{key}.{row['decoding']}"
        for split in ("test", "test_unseen"):
            hyps = (evals / f"{chosen}.{split}.hyp").read_text(encoding="utf-8").splitlines()
            assert len(hyps) == n_test
            scores = json.loads((evals / f"{chosen}.{split}.json").read_text())
            assert scores["n"] == n_test and row[f"bleu_{split}"] == scores["bleu"]
            assert "\u2581" not in "".join(hyps)  # detokenized
        assert json.loads((evals / f"{key}.test.json").read_text())["bleu"] == row["bleu_test_beam5"]
        assert rows[row["method"]][7] == f"{row['bleu_test_beam5']:.2f}"
        # ... and that column's own paired bootstrap against NLL's beam-5 test translations
        p_fixed = rows[row["method"]][8]
        if key == "nll":
            assert p_fixed == "–" and row["p_vs_nll"]["test/beam5"] is None
        else:
            p = demo_module().paired_bootstrap(SimpleNamespace(out=out_dir), ddtp_ci, "test", "nll", key)
            assert results["p_values"][f"test/beam5:{key}-vs-nll"] == row["p_vs_nll"]["test/beam5"] == p
            assert p_fixed == f"{p:.3f}"
    assert len((out_dir / "eval" / "expert.test.hyp").read_text(encoding="utf-8").splitlines()) == n_test

    # where the students and the expert stop (examples/imitkd/length_diagnostics.py on this run's dev set; its
    # main in this process, which has torch and fairseq imported already: a fresh interpreter spent ≈ 4 s on that)
    diag_json = tmp_path / "lengths.json"
    demo_module()
    import length_diagnostics

    capsys.readouterr()
    rc = length_diagnostics.main(["--demo", str(out_dir), "--corpus", str(ddtp_ci), "--students", "nll,imit_kd_CE",
                                  "--json", str(diag_json)])
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    lengths = json.loads(diag_json.read_text())
    assert set(lengths) == {"nll", "imit_kd_CE"} and out.out.count("\n") == 3
    for r in lengths.values():
        assert r["sentences"] == len(read_manifest(ddtp_ci / "dev.tsv"))
        assert 0 < r["rollout"] <= 1.5 + 5  # a·gold + b per sentence, as a fraction of the gold length
        assert 0 <= r["expert_on_rollout"] <= r["rollout"]  # the expert's end lies within the prefix it read
        assert 0 <= r["expert_on_gold"] <= 1 and 0 <= r["student_on_gold"] <= 1  # (a 30-update expert may stop at once)
        assert 0 <= r["expert_p_eos_rollout"] <= 1 and 0 <= r["expert_p_eos_gold"] <= 1

    # progress: a line per stage with elapsed time, and training progress lines
    assert re.search(r"^\[\d\d:\d\d\] == student imit_kd_CE$", log, re.M)
    assert re.search(r"^\[\d\d:\d\d\]\s+\[student imit_kd_CE\] update \d+/8 loss .*beta", log, re.M)
    timings = json.loads((out_dir / "timings.json").read_text())["runs"]
    assert set(timings[-1]["stages"]) >= {"corpus", "expert", "asr", "transcripts", "student imit_kd_CE", "report"}
    assert re.search(r"^\[\d\d:\d\d\]\s+\[decoding: imit_kd_CE(\.greedy)? on test_unseen\] done in", log, re.M)

    # resumable: the same command again skips every stage and reproduces the table
    png_mtime = (out_dir / "demo.png").stat().st_mtime
    # (-X importtime: the demo process itself never imports torch, ≈ 2-5 s of a core per invocation; its
    # children, forked or started, write their own stderr to their logs)
    second = run_demo(*args, timeout=300, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    assert second.returncode == 0, second.stdout[-3000:]
    imported = re.findall(r"^import time:.*\| +(\S+)$", second.stdout, re.M)
    assert "matplotlib" in imported and "torch" not in imported and "imitkd" not in imported
    second_log = "\n".join(line for line in second.stdout.splitlines() if not line.startswith("import time:"))
    assert "imitkd-train" not in second_log and second_log.count("skipped") >= 4
    assert (out_dir / "results.md").read_text().split("* Run:")[0] == md.split("* Run:")[0]  # both tables
    assert (out_dir / "demo.png").stat().st_mtime >= png_mtime
    runs = json.loads((out_dir / "timings.json").read_text())["runs"]
    assert len(runs) == 2 and all(v["status"].startswith("skipped") for k, v in runs[1]["stages"].items()
                                  if k.startswith(("expert", "asr", "student")))
    # the resumed report names the invocation that trained its table: its start, commit and wall time
    assert runs[0]["commit"] == runs[1]["commit"] != ""
    run_note = next(line for line in (out_dir / "results.md").read_text().splitlines() if line.startswith("* Run:"))
    # ... and what --expert-dtype/--rollout-dtype auto meant in its students' runs (read from their logs)
    auto = re.search(r"expert and rollouts in (\S+) \(`--expert-dtype/--rollout-dtype auto` here\)", run_note)
    assert auto and f" runs on cpu in {auto[1]} (--expert-dtype auto)" in (students / "word_kd" / "train.log").read_text()
    assert (f"earlier invocations in this output directory (where the stages it skipped ran): {runs[0]['started']} "
            f"(commit {runs[0]['commit']}, {demo_module().fmt_time(runs[0]['total_seconds'])} wall).") in run_note

    # further student seeds: the NLL student again with fairseq --seed 2 (the same corpus, ASR model and
    # expert), scored the same way; results.md adds BLEU per seed, mean and sd, and the main table keeps every
    # student (that adding seeds later reuses the seed-1 runs: test_seed_methods_limit_only_the_further_seeds)
    stages = runs[0]["stages"]
    assert stages["student nll.seed2"]["status"] == "done"
    assert " --seed 2 " in (students / "nll.seed2" / "train.log").read_text()
    assert " --seed 1 " in (students / "nll" / "train.log").read_text()
    assert "## Student seeds" in md and "* NLL (label-smoothed CE) trained again with fairseq --seed 2 " in md
    assert not any(name.startswith("student ") and name.endswith(".seed2") and name != "student nll.seed2"
                   for name in stages)
    seeds = json.loads((out_dir / "results.json").read_text())["student_seeds"]
    assert set(seeds) == {"nll"}
    for key, rec in seeds.items():
        row = next(r for r in results["rows"] if r["key"] == key)
        for split in ("test", "test_unseen"):
            seed2 = json.loads((evals / f"{chosen_stem(evals, key + '.seed2')}.{split}.json").read_text())["bleu"]
            assert rec[split]["bleu"] == [row[f"bleu_{split}"], seed2]
            assert rec[split]["mean"] == pytest.approx((row[f"bleu_{split}"] + seed2) / 2, abs=0.0051)
            assert rec[split]["sd"] == pytest.approx(abs(row[f"bleu_{split}"] - seed2) / 2 ** 0.5, abs=0.0051)
        cells = table_rows(md.split("## Student seeds")[1])[METHODS[KEYS.index(key)]]
        assert cells[0] == " / ".join(f"{v:.2f}" for v in rec["test"]["bleu"])
        assert cells[1] == f"{rec['test']['mean']:.2f} ± {rec['test']['sd']:.2f}"
        # every seed also with beam 5 on test (no decoding chosen on dev)
        seed2_beam5 = json.loads((evals / f"{key}.seed2.test.json").read_text())["bleu"]
        assert rec["test/beam5"]["bleu"] == [row["bleu_test_beam5"], seed2_beam5]
        assert cells[4] == " / ".join(f"{v:.2f}" for v in rec["test/beam5"]["bleu"])


def chosen_stem(evals: Path, key: str) -> str:
    """The eval file stem a student run was scored with on test: its key (beam 5) or <key>.<decoding>,
    the decoding of its best dev BLEU (the first of --decodings on a tie) among those whose dev translations
    are ≥ 95 % distinct (all, if none is)."""
    stems = {d: key if d == "beam5" else f"{key}.{d}" for d in ("beam5", "greedy")}
    dev = {d: json.loads((evals / f"{stem}.dev.json").read_text())["bleu"] for d, stem in stems.items()}
    hyps = {d: (evals / f"{stem}.dev.hyp").read_text(encoding="utf-8").splitlines() for d, stem in stems.items()}
    eligible = [d for d in stems if len(set(hyps[d])) / len(hyps[d]) >= 0.95] or list(stems)
    return stems[max(eligible, key=lambda d: dev[d])]


def test_students_start_costliest_first_and_further_seeds_last(tmp_path):
    """Ready students start in ``training_graph``'s order: ImitKD, then word KD, then NLL (so the two lanes
    end together), each class in the preset's order; ``--student-seeds`` runs come after all of them."""
    demo = demo_module()
    args = demo.get_parser().parse_args(["--out", str(tmp_path)])
    args.out, args.student_seeds = tmp_path, (2,)
    args.decodings, args.splits = ("beam5", "greedy"), ("test", "test_unseen")  # (as main sets them)
    jobs = demo.training_graph(args, demo.PRESETS["small"], tmp_path / "corpus", demo.Clock())
    students = [name for name in jobs if name.split(".")[0] in KEYS]
    first = ["imit_kd_CE", "imit_kd", "imitkdt", "word_kd", "kdt", "nll"]
    assert students == first + [f"{key}.seed2" for key in first]
    assert jobs["imitkdt.seed2"][1] == jobs["imitkdt"][1] == ("asr", "expert", "transcripts")
    assert jobs["nll.seed2"][1] == ("asr",)
    # each student's decodings are jobs of their own, right after its training (before the next student's),
    # so that an idle lane takes one: dev under each decoding, then each test split, then the record
    names = list(jobs)
    for key in students:
        dev = (f"eval {key} dev beam5", f"eval {key} dev greedy")
        assert jobs[dev[0]][1] == jobs[dev[1]][1] == (key,)
        assert jobs[f"eval {key} test"][1] == jobs[f"eval {key} test_unseen"][1] == dev
        assert jobs[f"eval {key}"][1] == (f"eval {key} test", f"eval {key} test_unseen")
        mine = [n for n in names if n.startswith(f"eval {key} ") or n == f"eval {key}"]
        assert names[names.index(key) + 1: names.index(key) + 1 + len(mine)] == mine


def test_a_decoding_that_collapses_on_dev_is_not_chosen():
    choose = demo_module().choose_decoding
    bleu = {"beam5": {"bleu": 7.0}, "beam5-lenpen2": {"bleu": 7.1}, "greedy": {"bleu": 6.8}}
    # the small AVX2 run's ImitKD-optimal student (bb4b4bb): lenpen 2 had the best dev BLEU with 207 of 223 distinct
    distinct = {"beam5": 183 / 223, "beam5-lenpen2": 207 / 223, "greedy": 214 / 223}
    assert choose(bleu, distinct) == "greedy"
    assert choose(bleu, {d: 1.0 for d in bleu}) == "beam5-lenpen2"  # none collapsed: the best dev BLEU
    assert choose(bleu, {d: 0.5 for d in bleu}) == "beam5-lenpen2"  # all collapsed: the best of all
    assert choose(bleu, {**distinct, "beam5": 0.95}) == "beam5"  # exactly 95 % is enough
    assert choose({d: {"bleu": 7.0} for d in bleu}, {d: 1.0 for d in bleu}) == "beam5"  # a tie: --decodings order


def test_stage_keys_do_not_depend_on_where_the_checkout_or_venv_lies(tmp_path, monkeypatch):
    """A demo resumed from another checkout (a git worktree) or venv skips what is done: neither the
    executable nor this checkout's own scripts enter a stage's key by their absolute path."""
    demo = demo_module()
    other = tmp_path / "elsewhere"
    moved = {name: other / getattr(demo, name).relative_to(demo.REPO) for name in ("CTC_SCRIPT", "DATASET_SCRIPT")}
    here = [sys.executable, demo.CTC_SCRIPT, tmp_path / "corpus", "--joint-beam", "4"]
    key = demo.command_key(here, "asr-key")
    monkeypatch.setattr(demo, "REPO", other)
    for name, path in moved.items():
        monkeypatch.setattr(demo, name, path)
    assert demo.command_key(["/opt/venv/bin/python", moved["CTC_SCRIPT"], *here[2:]], "asr-key") == key
    # what the stage reads and does still changes it
    assert demo.command_key(["python", moved["CTC_SCRIPT"], *here[2:]], "other-asr-key") != key
    assert demo.command_key(["python", moved["CTC_SCRIPT"], tmp_path / "corpus", "--joint-beam", "8"], "asr-key") != key
    assert demo.command_key(["python", moved["DATASET_SCRIPT"], *here[2:]], "asr-key") != key


def test_asr_average_names_a_damaged_or_missing_checkpoint_in_one_line(tmp_path):
    demo = demo_module()
    for update in (100, 200):
        (tmp_path / f"checkpoint_1_{update}.pt").write_bytes(b"not a checkpoint")
    args, clock = SimpleNamespace(force=False, threads=1), SimpleNamespace(say=print)
    with pytest.raises(demo.DemoError, match=r"asr: averaging its checkpoints failed: .*checkpoint_1_100\.pt"):
        demo.asr_average(args, {"asr_average": 2}, tmp_path, {"key": "k"}, clock)
    (tmp_path / "checkpoint_1_100.pt").unlink()
    with pytest.raises(demo.DemoError, match=r"asr: averaging its checkpoints failed: .*: 1 interval checkpoints, "
                                             r"--num-update-checkpoints asks for 2$"):
        demo.asr_average(args, {"asr_average": 2}, tmp_path, {"key": "k"}, clock)
    assert not (tmp_path / "checkpoint_avg.pt").exists()
    # made once per training run: a done-record that names the averaged checkpoints (a resumed demo) skips it;
    # a fresh one (the ASR model trained again) or another count averages again
    (tmp_path / "checkpoint_avg.pt").write_bytes(b"the mean")
    done = {"key": "k", "averaged": ["checkpoint_1_100.pt", "checkpoint_1_200.pt"]}
    assert demo.asr_average(args, {"asr_average": 2}, tmp_path, done, clock) == tmp_path / "checkpoint_avg.pt"
    for stale in ({"key": "k"}, {**done, "averaged": done["averaged"][1:]}):
        with pytest.raises(demo.DemoError, match="1 interval checkpoints"):
            demo.asr_average(args, {"asr_average": 2}, tmp_path, stale, clock)


def test_linear_lr_decay_refuses_a_time_cap():
    """A linear decay ends at --max-update; under a wall-clock cap it would stop at a high learning rate."""
    demo = demo_module()
    P = dict(demo.PRESETS["small"], asr_lr_schedule="linear")
    with pytest.raises(demo.DemoError, match="asr: a linear learning-rate decay needs a fixed number of updates"):
        demo.s2t_cmd(SimpleNamespace(), P, Path("corpus"), "asr", "train_asr", "dev_asr", Path("asr"))
    assert demo.lr_schedule_flags("linear", 250, 7200)[:2] == ["--lr-scheduler", "polynomial_decay"]
    with pytest.raises(demo.DemoError, match="unknown learning-rate schedule 'cosine'"):
        demo.lr_schedule_flags("cosine", 250, 7200)


def test_int8_training_check_refuses_bad_arguments_in_one_line(tmp_path):
    """examples/imitkd/int8_training_check.py (benchmarks/README.md's training check) names what is wrong."""
    script = REPO / "examples" / "imitkd" / "int8_training_check.py"

    def check(*args):
        out = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "o"), *map(str, args)], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
        return out.stderr.strip().splitlines()[-1]

    assert check("--demo", tmp_path / "none", "--runs", "fp32:1") == (
        f"error: {(tmp_path / 'none').resolve() / 'asr' / 'checkpoint_best.pt'} not found: run run_demo.py --size medium "
        f"--out {tmp_path / 'none'} first")
    demo_dir = tmp_path / "demo"
    for f in ("asr/checkpoint_best.pt", "expert/checkpoint_best.pt", "corpus/dev.tsv"):
        (demo_dir / f).parent.mkdir(parents=True, exist_ok=True)
        (demo_dir / f).write_text("")
    assert check("--demo", demo_dir, "--runs", "bf16:1") == (
        "error: unknown setting 'bf16' in --runs (fp32 or int8, optionally +train-enc)")
    assert check("--demo", demo_dir, "--runs", "int8:x") == "error: --runs entry int8:x needs an integer seed"
    hold = demo_module().PRESETS["medium"]["beta_hold"]
    assert check("--demo", demo_dir, "--runs", "int8:1", "--fork", hold + 1) == (
        f"error: --fork {hold + 1} must be within the β hold (1..{hold} updates; --hold)")
    assert not (tmp_path / "o").exists()



@pytest.mark.parametrize("lanes", [1, 2])
def test_lanes_run_late_jobs_and_cancel_queued_ones_after_a_failure(lanes):
    """run_demo.Lanes (the transcripts stage's decodings): a job submitted while another one runs runs
    too; after a failure no queued job starts."""
    import threading

    Lanes = demo_module().Lanes
    gate, ran = threading.Event(), []

    def job(name, wait=0.0, fail=False):
        def run():
            gate.wait(wait)
            ran.append(name)
            if fail:
                raise RuntimeError(name)
            return name
        return run

    with Lanes(lanes) as pool:
        slow = pool.submit(job("dev-ctc", wait=5 if lanes > 1 else 0))
        assert pool.submit(job("dev")).result() == "dev"
        late = pool.submit(job("train"))
        gate.set()
        assert (slow.result(), late.result()) == ("dev-ctc", "train")
    assert sorted(ran) == ["dev", "dev-ctc", "train"]

    gate.clear()
    ran.clear()
    with pytest.raises(RuntimeError, match="bad"):
        with Lanes(lanes) as pool:
            for name in ("running", "bad", "queued")[2 - lanes:]:  # two lanes: both busy when "queued" comes
                pool.submit(job(name, wait=0.3 if lanes > 1 else 0, fail=name == "bad"))
            if lanes > 1:
                raise RuntimeError("bad")  # the caller fails while both lanes are busy
    assert "queued" not in ran and (ran == ["bad"] if lanes == 1 else sorted(ran) == ["bad", "running"])


@pytest.mark.parametrize("lanes", [1, 2])
def test_run_graph_starts_a_job_when_its_dependencies_are_done(lanes):
    """run_demo.run_graph, as the demo uses it: the NLL student (needs the ASR model) starts while the
    expert still trains, KD waits for both; a job gets its dependencies' results; after a failure
    nothing more starts."""
    import threading

    run_graph = demo_module().run_graph
    expert_may_finish, log = threading.Event(), []

    def job(name, deps=(), fail=False):
        def run(results):
            if name == "expert" and lanes > 1:
                assert expert_may_finish.wait(5), "the NLL student did not start while the expert trained"
            log.append(name)
            if name == "nll":
                expert_may_finish.set()
            if fail:
                raise RuntimeError(name)
            return name + "(" + ",".join(results[d] for d in deps) + ")"
        return run, deps

    jobs = {"asr": job("asr"), "expert": job("expert"), "kd": job("kd", ("asr", "expert")),
            "nll": job("nll", ("asr",))}
    done = run_graph(jobs, lanes)
    assert done == {"asr": "asr()", "expert": "expert()", "nll": "nll(asr())", "kd": "kd(asr(),expert())"}
    assert log.index("kd") > max(log.index("asr"), log.index("expert"))
    if lanes > 1:
        assert log.index("nll") < log.index("expert")

    log.clear()
    expert_may_finish.set()
    with pytest.raises(RuntimeError, match="asr"):
        run_graph({"asr": job("asr", fail=True), "nll": job("nll", ("asr",)), "more": job("more")}, lanes)
    assert "nll" not in log and (lanes > 1 or log == ["asr"])
    with pytest.raises(ValueError, match="unknown dependencies"):
        run_graph({"kd": job("kd", ("expert",))}, lanes)


def _processes_writing(path: Path):
    """PIDs of the live processes whose stdout is ``path`` (Linux /proc): the demo's forked training runs
    write their logs themselves."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if os.readlink(d / "fd" / "1") == str(path):
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="reads /proc")
def test_a_signal_to_the_demo_stops_its_training_runs(ddtp_ci, tmp_path):
    """``kill <demo>`` (a scheduler's timeout, a closed terminal: the signal reaches the demo alone) also
    ends the ASR and expert runs it started; left running they would train on into --out, beside the
    resumed demo's own runs of the same stage. Exit status 128 + 15, one line saying how to resume."""
    import signal
    import threading
    import time

    out_dir = tmp_path / "demo"
    demo = subprocess.Popen([sys.executable, str(DEMO), "--size", "ci", "--out", str(out_dir), "--corpus", str(ddtp_ci),
                             "--expert-updates", "100000", "--asr-updates", "100000"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(demo.stdout), daemon=True)
    reader.start()
    runs = [out_dir / name / "train.log" for name in ("asr", "expert")]  # the two fairseq-train runs' logs
    deadline = time.time() + 300
    while not all(_processes_writing(run) for run in runs):
        assert demo.poll() is None and time.time() < deadline, "".join(lines)[-3000:]
        time.sleep(0.5)
    children = {run: _processes_writing(run) for run in runs}
    assert all(Path(f"/proc/{pid}/comm").read_text().strip() == "imitkd-train" for pids in children.values() for pid in pids)

    demo.send_signal(signal.SIGTERM)
    assert demo.wait(timeout=120) == 128 + signal.SIGTERM
    reader.join(timeout=10)
    assert "SIGTERM: stopped (its training runs too); run the same command again to resume" in "".join(lines)
    deadline = time.time() + 30
    while any(_processes_writing(run) for run in runs) and time.time() < deadline:
        time.sleep(0.5)
    assert not [pid for run in runs for pid in _processes_writing(run)], children
