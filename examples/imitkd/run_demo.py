#!/usr/bin/env python3
"""One-command offline demo: the original ImitKD recipe for speech translation, end to end, on a CPU.

``make demo`` (= ``python examples/imitkd/run_demo.py --size small --out demo``) runs, on 2 CPU
cores, without a GPU or any download but Debian's package index:

1. **corpus**: DDTP-ST en→de (``examples/speech_to_text/build_ddtp_st.py``: Debian package
   descriptions, English side spoken by espeak-ng, 80-dim fbank) with a joint en+de sentencepiece
   vocabulary (``dict.txt``, shared by the ASR model, the expert and the students). Size ``small``
   keeps plain English sentences of 3–16 words (no package names or code identifiers read aloud);
2. **expert** (lane 2): a text NMT transformer on the whole DDTP train pool (tens of thousands of
   pairs, a superset of the students' text; dev/test packages stay held out) — an expert that knows
   more than the students can learn from the speech data;
3. **ASR** (lane 1, beside the expert): the same ``s2t_transformer`` as the students, trained on
   speech → English transcript (``<split>_asr.tsv`` manifests) with label-smoothed NLL plus CTC on
   the transcript (``--criterion nll --ctc-weight``); with ``--asr-extra N`` (preset ``asr_extra``)
   also on N English-only utterances of train packages (``train_asr_extra.tsv``, built with the corpus).
   Its WER on test/test_unseen is reported;
4. **transcripts** (original workflow, step 2; as soon as the ASR model is trained, while the expert
   may still train): the ASR model transcribes dev with attention beam
   search (``imitkd-generate``), with its CTC head (``ctc_transcribe.py``) and with both jointly
   (``ctc_transcribe.py --joint-beam``), then train and the test splits with the one of lowest dev WER;
   ``create_wmt19_generated_dataset.py -a`` writes ``train_kdt.tsv`` whose ``src_text`` is the ASR
   transcript (what the expert reads for KDT/ImitKDT). Size ``medium`` (the small corpus, about three
   times the compute, no time caps) also has the expert translate the train text once it is trained
   (``-o``: ``train_seqkd.tsv``, sequence-level KD);
5. **students** (two at a time, one thread each; each starts as soon as what it reads is there: NLL
   the ASR model, KD also the expert, KDT/ImitKDT also the transcripts; each is decoded in its lane as
   soon as it is trained, see 6): every student's encoder starts from the ASR model
   (``--load-pretrained-encoder-from``, frozen for ``--encoder-freezing-updates``) and keeps a CTC
   loss on the transcript; then NLL, word-level KD, ImitKD-full, ImitKD-optimal, KDT and ImitKDT
   (medium adds SeqKD and ImitKD*), with the same updates and seed. Every validation also decodes dev
   greedily (the dev BLEU curve); ``checkpoint_best.pt`` is the best dev NLL or, with the preset's
   ``student_select`` "bleu", the best of that dev BLEU;
6. **evaluation**: each student decodes ``dev`` with every decoding of ``--decodings`` (beam 5, beam 5
   with length penalty 2, greedy) and is scored on ``test`` and ``test_unseen`` (the same sentences
   spoken by held-out voices) and, where the preset's ``unseen_engine`` is set, ``test_unseen_engine``
   (the same sentences spoken by another synthesiser, flite, that no training utterance comes from)
   with the one that has its best dev BLEU, and with beam 5 for reference;
   detokenized sacreBLEU and chrF, distinct outputs, paired-bootstrap p-values (sacrebleu, 1000
   resamples) of every method against NLL and of ImitKD-full against word-KD, under the chosen decodings
   and, on test, with every student under beam 5 (a comparison without any choice made on dev);
7. **report**: ``<out>/results.md`` (printed), ``results.json`` and ``demo.png`` (β, dev-loss and
   dev-BLEU curves of every student, BLEU bars). With ``--student-seeds 2,3`` every student (or those of
   ``--seed-methods``) is also trained and scored with those seeds (after all the others), and
   ``results.md`` adds each method's BLEU per seed, mean and standard deviation: the training run's
   noise beside the p-values' test-set noise.

Every setting was chosen on dev (never on test); ``results.md`` names the commit and the machine.
Every stage is skipped when its output exists with the same settings, so an interrupted demo
resumes where it stopped (an interrupted fairseq run resumes from its ``checkpoint_last.pt``);
``--force`` redoes the models and evaluations, ``--rebuild-corpus`` also re-synthesises the corpus.
SIGINT, SIGTERM or SIGHUP to the demo alone (``kill``, a scheduler's timeout) also stops the runs it
started (exit status 128 + the signal), so none goes on writing into ``--out``.

Layout of ``--out``::

    corpus/                 DDTP-ST (+ <split>_asr.tsv, train_kdt.tsv, train_seqkd.tsv written here)
    expert-text/ expert-bin/  the expert's training text and fairseq-preprocess output
    expert/ asr/            checkpoint_best.pt, train.log, done.json
    transcripts/            ASR (beam/CTC) and expert generate logs, wer.json, decoding.json
    students/<method>/      checkpoint_best.pt, train.log, done.json (<method>.seed<N>/: --student-seeds)
    eval/<system>.<split>.json, .hyp   scores and detokenized hypotheses (one per line, in test order);
                            <system> is the student's key (beam 5) or <key>.<decoding>
    results.md results.json demo.png timings.json

Needs espeak-ng (``apt-get install -y espeak-ng``) and, once, Debian's package index (the DDTP
translation files). ``--size ci`` with few updates is the seconds-long smoke version the tests run.
Exit status 2 with a one-line ``error:`` on a missing tool or a failed stage (the failing log is named).
"""
import argparse
import collections
import concurrent.futures
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import forked_runs
from imitkd_data import atomic
from imitkd_data.ddtp.apt import fetch_translations
from imitkd_data.ddtp.corpus import build
from imitkd_data.ddtp.text import ASR_EXTRA, select_text
from imitkd_data.errors import BuildError, DataPrepError, ParamsMismatch, make_output_dir
from imitkd_data.manifest import read_manifest, write_manifest

REPO = Path(__file__).resolve().parents[2]
DATASET_SCRIPT = REPO / "examples" / "imitkd" / "create_wmt19_generated_dataset.py"
CTC_SCRIPT = REPO / "examples" / "imitkd" / "ctc_transcribe.py"
VENV_BIN = Path(sys.executable).parent
TEST_SPLITS = ("test", "test_unseen")
ENGINE_SPLIT = "test_unseen_engine"  #: the test sentences by another synthesiser (the preset's unseen_engine)
ALL_PAIRS = -1  #: expert_text_pairs: the whole DDTP train pool
#: how a student may decode (fairseq-generate --beam/--lenpen); every one in --decodings is tried on dev
#: and the one with the best dev BLEU (the first on a tie) decodes test. ImitKD trains on the student's
#: greedy prefixes, and its students' beam-5 outputs are the shortest (medium run, dev length ratio 0.73
#: vs NLL's 0.85), so greedy and a length bonus are tried; Lin et al. (2020) report greedy decoding.
DECODINGS = {"beam5": dict(beam=5, lenpen=1.0), "beam5-lenpen2": dict(beam=5, lenpen=2.0),
             "greedy": dict(beam=1, lenpen=1.0)}
REFERENCE_DECODING = "beam5"  #: also decodes test, for the table's fixed-decoding column


class Method:
    """One student: its row in the table, its criterion and flags, and the training data it reads
    (``gold``: train.tsv; ``asr``: train_kdt.tsv, the expert reads ASR transcripts; ``seqkd``:
    train_seqkd.tsv, targets are the expert's translations)."""

    def __init__(self, key, name, criterion, data="gold", extra=()):
        self.key, self.name, self.criterion, self.data, self.extra = key, name, criterion, data, list(extra)

    @property
    def imitation(self) -> bool:
        return self.criterion in ("imit_kd_CE", "imit_kd")


METHODS = {m.key: m for m in (
    Method("nll", "NLL (label-smoothed CE)", "nll", extra=["--label-smoothing", "0.1"]),
    Method("word_kd", "word-level KD", "word_kd"),
    Method("imit_kd_CE", "ImitKD-full (imit_kd_CE)", "imit_kd_CE"),
    Method("imit_kd", "ImitKD-optimal (imit_kd)", "imit_kd"),
    Method("kdt", "KDT (word KD, expert reads ASR)", "word_kd", data="asr"),
    Method("imitkdt", "ImitKDT (ImitKD-full, expert reads ASR)", "imit_kd_CE", data="asr"),
    Method("seqkd", "SeqKD (NLL on expert translations)", "nll", data="seqkd", extra=["--label-smoothing", "0.1"]),
    Method("imitkd_star", "ImitKD* (ImitKD-full on expert translations)", "imit_kd_CE", data="seqkd"),
)}
BASE_METHODS = ("nll", "word_kd", "imit_kd_CE", "imit_kd", "kdt", "imitkdt")

#: per corpus size: vocabulary, model sizes and budgets (CPU-sized; chosen on dev)
PRESETS = {
    "ci": dict(
        corpus="ci", spm_vocab_size=1000, methods=BASE_METHODS, expert_text_pairs=0,
        expert_layers=1, expert_dim=64, expert_ffn=128, expert_heads=2, expert_dropout=0.1,
        expert_attention_dropout=0.1, expert_max_tokens=2000,
        expert_lr=2e-3, expert_warmup=50, expert_updates=200, expert_stop_hours=0,
        enc_layers=1, dec_layers=1, dim=64, ffn=128, heads=2, conv_kernels="5,5",
        asr_updates=100, asr_stop_hours=0, asr_lr=2e-3, asr_warmup=50, asr_ctc_weight=0.5, asr_max_tokens=20000,
        asr_extra=30, asr_lr_schedule="linear", asr_average=2,
        student_updates=60, student_lr=2e-3, student_warmup=20, student_ctc_weight=0.3, student_max_tokens=20000,
        encoder_freezing=10, student_select="bleu",
        beta_hold=0, transcribe_beam=1, joint_beam=2, joint_ctc_weight=0.5, joint_length_bonus=1.0, log_interval=10,
        validate_every=50, unseen_engine=None,
    ),
    # chosen on dev (examples/imitkd/RESULTS.md): the ASR model and the expert train side by side for at most their
    # updates or stop_hours (whichever comes first); every student gets the same fixed updates; β is
    # held at 1 for the first half of the ImitKD runs (dev BLEU 7.15 vs 5.56 without the hold). Batches
    # are half (ASR, students) or a quarter (expert) of what they were before: twice the updates in the
    # same time learned faster on dev (ASR dev NLL after 9 min 3.24 vs 3.94 bits; NLL student dev BLEU
    # 7.93 vs 6.93, ImitKD-full 8.07 vs 7.63; expert dev NLL after 15 min 4.69 vs 4.82). The expert has
    # no dropout: its 15 minutes are < 2 epochs of the 30k pairs, and without dropout (and attention
    # dropout) its dev NLL after 15 min was 3.24 bits against 3.95 with dropout 0.2 (0.1 / 0.1: 3.63),
    # dev BLEU (beam 5) 12.4 against 7.1 (0.1: 10.1); dev probes beside each other at 7d92867 (RESULTS.md).
    # The ASR stage's cap is 0.25 h (was 0.27): joint decoding's train transcription (~3 min on one core)
    # is paid for from it. The demo still took 66 minutes at 38c8ee8 (RESULTS.md: the schedule, since changed).
    # The ASR model the students and transcripts use is the mean of its last 3 checkpoints, saved every 100
    # updates (asr_average, asr_save_every): dev WER 53.1 → 50.7 % with the AVX2 machine's 15-minute model at
    # cb6f60c (the last 5: 51.0, the last 10: 54.1; RESULTS.md, small section). Its update cap is 3,000 (was
    # 2,400), so that the 15-minute cap decides where a machine allows more: the AVX2 run at 3e2560d reached 2,400
    # in 13:06, and the same model trained on to 3,000 had dev WER 48.6 → 48.1 (2,700) → 47.2 % (3,000), the mean
    # of its last 3 checkpoints each time; it trains beside the expert's 15 minutes, so the demo's wall time is
    # unchanged where both stop at their caps
    "small": dict(
        corpus="small", train_voices="seen", spm_vocab_size=1000, methods=BASE_METHODS,
        expert_text_pairs=ALL_PAIRS,
        expert_layers=2, expert_dim=192, expert_ffn=768, expert_heads=4, expert_dropout=0.0,
        expert_attention_dropout=0.0, expert_max_tokens=2048,
        expert_lr=3e-3, expert_warmup=200, expert_updates=4000, expert_stop_hours=0.25,
        enc_layers=3, dec_layers=2, dim=128, ffn=512, heads=4, conv_kernels="5,5,5",
        asr_updates=3000, asr_stop_hours=0.25, asr_lr=5e-3, asr_warmup=250, asr_ctc_weight=0.5, asr_max_tokens=10000,
        asr_extra=0, asr_lr_schedule="inverse_sqrt", asr_average=3, asr_save_every=100,
        student_updates=1000, student_lr=2e-3, student_warmup=200, student_ctc_weight=0.3, student_max_tokens=10000,
        encoder_freezing=200, student_select="bleu",
        beta_hold=500, transcribe_beam=4, joint_beam=32, joint_ctc_weight=0.5, joint_length_bonus=1.5,
        log_interval=50, validate_every=200, unseen_engine="flite",
    ),
}
# the small corpus and models with about three times the compute (no time caps, so the result does not depend
# on the machine's load): the small run's limits were an ASR model and an expert that were still improving
# when stopped, and the student updates; medium adds SeqKD and ImitKD*. Its expert keeps the batches it was
# measured with (2,800 updates of 4,096 tokens) and, like small's, has no dropout: at 1,800 updates its dev
# NLL was 2.42 bits and dev BLEU 17.8, against 2.50 and 17.1 after all 2,800 with dropout 0.2 (dev probe at
# fba3a31, RESULTS.md; checkpoint_best keeps the lowest dev loss). Its ASR stage also reads 16,000 English-only
# utterances: on the 4,698 pairs alone it overfits from ~4,000 updates on (train NLL 0.9, dev 2.0 bits) and
# ends at 60.2 % CTC dev WER; with them, 46.7 % at 6,400 updates (dev probe at 4c757de, RESULTS.md). Its learning
# rate stays 1/√update: a linear decay to 0 (asr_lr_schedule "linear", run at 617925e) lowered the attention
# decoder's dev WER (53.0 → 42.9 %) but raised the CTC head's (45.8 → 52.5 %), and the six students built on
# that encoder all had a higher dev NLL (+0.07 to +0.11 bits), five a lower dev BLEU (RESULTS.md). Students keep
# the checkpoint of the best greedy dev BLEU (small's student_select, inherited): in medium the best dev NLL
# kept ImitKD-optimal's update 1,000 (β still 1) and ImitKDT's 1,200 of 2,000, and their last checkpoints
# decode dev 0.8 / 1.0 BLEU better (ImitKD-full 1,400: +0.3; NLL, word-KD and KDT: best = last); small's
# ImitKD students hold β = 1 for 500 of 1,000 updates, the same situation. Medium's train splits are spoken by 90
# voices (train_voices "many": the seen accents × 15 espeak-ng variants) instead of dev/test's 8: chosen on
# dev (5995daf against 9fd667f's 8-voice run), the ASR model's joint-decoding WER on dev_unseen (held-out voices)
# fell from 49.9 to 39.8 %, on dev (seen voices) it rose from 26.9 to 28.7 % (RESULTS.md). Small keeps its 8
# voices: 90 cost its ASR model (2,824 updates) 4.5 points of dev WER for 3.1 on dev_unseen (47.2 → 51.7 %,
# 58.9 → 55.8 %; dev probe at 6ed5245, RESULTS.md). Its ASR stage trains 10,800 updates (was 7,200): the
# 90-voice model trained on from 7,200 to 10,800 (inverse-√ schedule, so the same as a 10,800-update run) fell
# from 28.7 to 25.0 % joint-decoding dev WER and from 39.8 to 35.1 % on dev_unseen, dev NLL 1.061 → 0.874 bits
# (dev probe at 5995daf, RESULTS.md)
PRESETS["medium"] = dict(
    PRESETS["small"], train_voices="many", methods=BASE_METHODS + ("seqkd", "imitkd_star"), expert_max_tokens=4096,
    expert_updates=2800, expert_stop_hours=0, asr_updates=10800, asr_stop_hours=0, asr_extra=16000,
    student_updates=2000, encoder_freezing=400, beta_hold=1000, joint_beam=32, joint_ctc_weight=0.3, asr_average=0, asr_save_every=None,
    joint_length_bonus=1.5, log_interval=50, validate_every=200,
)
COMMON = ["--cpu", "--num-workers", "0", "--seed", "1", "--no-progress-bar", "--log-format", "json",
          "--required-batch-size-multiple", "1"]


def common_flags(seed: int):
    """``COMMON`` with fairseq's ``--seed`` set (same order, so seed 1 gives the command it always did)."""
    flags = list(COMMON)
    flags[flags.index("--seed") + 1] = str(seed)
    return flags


class DemoError(Exception):
    """A missing tool or a failed stage: printed as one line, exit status 2."""


# --------------------------------------------------------------------------- console
class Clock:
    def __init__(self):
        self.t0 = time.time()
        self.stages = {}  # name -> dict(seconds, status)
        self.lock = threading.Lock()

    def stamp(self) -> str:
        s = int(time.time() - self.t0)
        return f"[{s // 60:02d}:{s % 60:02d}]"

    def say(self, msg: str):
        with self.lock:
            print(f"{self.stamp()} {msg}", flush=True)

    def stage(self, name: str):
        return _Stage(self, name)


class _Stage:
    def __init__(self, clock: Clock, name: str):
        self.clock, self.name, self.status = clock, name, "done"

    def __enter__(self):
        self.t = time.time()
        self.clock.say(f"== {self.name}")
        return self

    def skip(self, why: str):
        self.status = f"skipped ({why})"
        self.clock.say(f"   [{self.name}] skipped: {why}")

    def __exit__(self, exc_type, exc, tb):
        dt = time.time() - self.t
        if exc_type is None:
            self.clock.stages[self.name] = dict(seconds=round(dt, 1), status=self.status)
            if self.status == "done":
                self.clock.say(f"   {self.name}: done in {fmt_time(dt)}")
        return False


def fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Lanes:
    """At most ``lanes`` jobs (callables) at a time, submitted as they become known: ``submit(job)``
    returns a future. Leaving the block with an exception cancels the queued jobs and waits for the
    running ones. With one lane a job runs at once in the caller's thread and its exception propagates
    from ``submit``, so nothing after a failure starts."""

    def __init__(self, lanes: int):
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=lanes) if lanes > 1 else None

    def submit(self, job) -> concurrent.futures.Future:
        if self.pool:
            return self.pool.submit(job)
        f = concurrent.futures.Future()
        f.set_result(job())
        return f

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.pool:
            self.pool.shutdown(wait=True, cancel_futures=exc_type is not None)
        return False


def run_graph(jobs, lanes: int) -> dict:
    """Run ``jobs`` ({name: (job, deps)}; ``job(results)`` gets the results so far) at most ``lanes`` at
    a time, each as soon as the jobs named in its ``deps`` have finished, the first ready one (in the
    order given) first; returns {name: result}. A lane never waits for a stage its next job does not
    need (e.g. the NLL student, which needs only the ASR model, trains while the expert still does).
    The first failure is raised once the running jobs have finished; nothing starts after it."""
    unknown = {d for _, deps in jobs.values() for d in deps} - set(jobs)
    if unknown:
        raise ValueError(f"run_graph: unknown dependencies {sorted(unknown)}")
    results, pending, running, error = {}, dict(jobs), {}, None
    with Lanes(lanes) as pool:  # one lane: each job runs in this thread at submit, and its failure propagates
        while pending or running:
            ready = [n for n, (_, deps) in pending.items() if all(d in results for d in deps)]
            for name in ready[: max(0, lanes - len(running))] if error is None else []:
                job, _ = pending.pop(name)
                running[pool.submit(functools.partial(job, dict(results)))] = name
            if not running:
                break
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                try:
                    results[name] = future.result()
                except BaseException as e:  # raised below, once the running jobs have finished
                    error = error or e
    if error is not None:
        raise error
    if pending:
        raise ValueError(f"run_graph: {sorted(pending)} wait on each other")
    return results


# --------------------------------------------------------------------------- subprocesses
class Interrupted(KeyboardInterrupt):
    """The demo got SIGINT, SIGTERM or SIGHUP (``signum``); its running children have been told to stop."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class Children:
    """The demo's running child processes (fairseq runs, decodings). A signal to the demo alone
    (``kill``, a scheduler's timeout, a closed terminal) would otherwise end the demo and leave them
    training into ``--out``, where a resumed demo would start a second run of the same stage;
    ``stop`` terminates them, and no new one starts after it."""

    def __init__(self):
        self.procs, self.lock, self.stopped = set(), threading.RLock(), None  # (re-entered by a signal)

    def _start(self, start):
        """``start()`` (a ``subprocess.Popen`` or a ``forked_runs.ForkedRun``) as a tracked child,
        unless ``stop`` came first."""
        with self.lock:
            if self.stopped is not None:
                raise Interrupted(self.stopped)
            proc = start()
            self.procs.add(proc)
            return proc

    def popen(self, cmd, **kwargs) -> subprocess.Popen:
        return self._start(lambda: subprocess.Popen([str(c) for c in cmd], **kwargs))

    def forget(self, proc: subprocess.Popen) -> None:
        with self.lock:
            self.procs.discard(proc)

    def _wait(self, proc) -> subprocess.CompletedProcess:
        """Wait for a tracked child; its output (stdout and stderr together) and exit status."""
        try:
            out, _ = proc.communicate()
        finally:
            self.forget(proc)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out)

    def run(self, cmd, **kwargs) -> subprocess.CompletedProcess:
        """``subprocess.run(cmd, stdout=PIPE, stderr=STDOUT, text=True, **kwargs)`` as a tracked child."""
        return self._wait(self.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs))

    def run_decoding(self, cmd, threads: int) -> subprocess.CompletedProcess:
        """A decoding (``imitkd-generate``, ``ctc_transcribe.py``): forked from the process that imported
        torch and fairseq once (``forked_runs``; ≈ 6–7.5 s of a core less each); otherwise ``run``."""
        if not forked_runs.forkable(cmd):
            return self.run(cmd, env=_env(threads), cwd=REPO)
        return self._wait(self._start(lambda: forked_runs.ForkedRun(cmd, REPO, threads)))

    def follow(self, cmd, log_path: Path, threads: int, on_line) -> int:
        """Run ``cmd`` with its output appended to ``log_path``, calling ``on_line`` with each line as it
        comes; returns the exit status. Forked (``forked_runs``) where it can be, otherwise a subprocess
        whose output the demo writes to the log."""
        if not forked_runs.forkable(cmd):
            return self._follow_subprocess(cmd, log_path, threads, on_line)
        with open(log_path, "rb") as log:
            log.seek(0, os.SEEK_END)
            proc = self._start(lambda: forked_runs.ForkedRun(cmd, REPO, threads, out_path=log_path))
            try:
                partial = b""
                while True:
                    ended = proc.poll() is not None  # read what it wrote before it ended, then stop
                    chunk = log.read()
                    lines = (partial + chunk).split(b"\n")
                    partial = lines.pop()
                    for line in lines:
                        on_line(line.decode("utf-8", errors="replace") + "\n")
                    if ended:
                        if partial:
                            on_line(partial.decode("utf-8", errors="replace"))
                        return proc.returncode
                    if not chunk:
                        time.sleep(0.2)
            finally:
                self.forget(proc)

    def _follow_subprocess(self, cmd, log_path: Path, threads: int, on_line) -> int:
        proc = self.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                          env=_env(threads), cwd=REPO)
        try:
            with open(log_path, "a", encoding="utf-8") as log:
                for line in proc.stdout:
                    log.write(line)
                    on_line(line)
            return proc.wait()
        finally:
            self.forget(proc)

    def stop(self, signum: int) -> None:
        with self.lock:
            self.stopped = signum
            procs = list(self.procs)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()


CHILDREN = Children()
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


def _on_signal(signum, frame):
    CHILDREN.stop(signum)
    raise Interrupted(signum)


def install_signal_handlers() -> dict:
    """SIGINT/SIGTERM/SIGHUP end the children too (main thread only), where they still have Python's
    default handling (as in create_wmt19_generated_dataset.py: nohup's ignored SIGHUP stays ignored);
    returns the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    sigs = [getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name)]
    defaults = (signal.SIG_DFL, signal.default_int_handler)
    return {sig: signal.signal(sig, _on_signal) for sig in sigs if signal.getsignal(sig) in defaults}


def _exe(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        found = shutil.which(name)
        if not found:
            raise DemoError(f"{name} not found next to {sys.executable} nor on PATH: install the package (pip install -e .)")
        return found
    return str(path)


def _env(threads: int):
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


#: "<time> | INFO | train_inner | {...}" (fairseq's format) or "INFO:train_inner:{...}" (logging's default)
_JSON_LINE = re.compile(r"(?:\|\s*|INFO:)([\w.]+)\s*(?:\||:)\s*(\{.*\})\s*$")


def parse_json_log(lines):
    """(tag, stats) for every fairseq ``--log-format json`` line: tags ``train_inner`` (every
    ``--log-interval`` updates), ``train`` (epoch summary) and the validation subset (``dev``...)."""
    out = []
    for line in lines:
        m = _JSON_LINE.search(line)
        if not m:
            continue
        try:
            out.append((m.group(1), json.loads(m.group(2))))
        except ValueError:
            continue
    return out


def _progress(line: str, clock: Clock, label: str, total=None) -> None:
    """Print one console line for a fairseq progress or validation record."""
    for tag, s in parse_json_log([line]):
        if tag == "train_inner":
            extra = "".join(f" {k} {s[k]}" for k in ("beta", "ctc_loss", "expert_accuracy") if k in s)
            of = f"/{total}" if total else ""
            clock.say(f"   [{label}] update {s.get('num_updates')}{of} loss {s.get('loss')} "
                      f"nll {s.get('nll_loss')}{extra} ({s.get('ups')} updates/s)")
        elif tag != "train":
            p = f"{tag}_"
            clock.say(f"   [{label}] {tag} @ {s.get(p + 'num_updates')} updates: gold NLL "
                      f"{s.get(p + 'nll_loss')} bits")


def run_logged(cmd, log_path: Path, clock: Clock, label: str, threads: int, quiet: bool = False, total=None) -> float:
    """Run ``cmd``, append its output to ``log_path`` and print one line per fairseq progress /
    validation record. Returns the wall time; raises DemoError naming the log on failure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t = time.time()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write("$ " + " ".join(map(str, cmd)) + "\n")
    tail = collections.deque(maxlen=30)

    def on_line(line: str) -> None:
        tail.append(line.rstrip())
        if not quiet:
            _progress(line, clock, label, total)

    rc = CHILDREN.follow(cmd, log_path, threads, on_line)
    if rc != 0:
        errors = [line for line in tail if line.startswith("error:") or "Error" in line]
        why = errors[-1] if errors else (tail[-1] if tail else "no output")
        raise DemoError(f"{label} failed (exit {rc}): {why.strip()} -- full log: {log_path}")
    return time.time() - t


def _settings_key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def command_key(cmd, *deps: str) -> str:
    """The key of a stage run by ``cmd``, given the keys of the stages it reads (``deps``): its arguments
    after the executable, with this checkout's own scripts named relative to the checkout. Where the
    checkout or the virtual environment lies never enters a key, so the same ``--out`` resumed from
    another checkout (a git worktree) skips what is done."""
    scripts = (CTC_SCRIPT, DATASET_SCRIPT)
    return _settings_key([str(c.relative_to(REPO)) if c in scripts else str(c) for c in cmd[1:]] + list(deps))


def _done(path: Path, key: str):
    """The done-record of a stage if it finished with these settings, else None."""
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except ValueError:
        return None
    return rec if rec.get("key") == key else None


def _done_key(path: Path) -> str:
    """The key of a stage's ``done.json``; for any other file (a generated manifest) a digest of its bytes."""
    try:
        if path.name != "done.json":
            return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        return json.loads(path.read_text()).get("key", "")
    except (OSError, ValueError):
        return ""


def _write_json(path: Path, obj):
    atomic.write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def _prepare_run_dir(d: Path, key: str, force: bool) -> str:
    """A fresh run directory ("fresh"), or "resume": an interrupted run with the same settings left
    its checkpoint_last.pt, from which fairseq goes on."""
    settings = d / "settings.json"
    if not force and _done(settings, key) and (d / "checkpoint_last.pt").is_file():
        return "resume"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    _write_json(settings, dict(key=key))
    return "fresh"


def train_run(args, clock, run_dir: Path, cmd, label: str, updates: int, deps=()) -> dict:
    """One fairseq-train run, skipped when done with the same command and dependencies, resumed
    when interrupted. Returns its done-record (``key``, ``train_seconds``)."""
    key = command_key(cmd, *(_done_key(Path(d)) for d in deps))
    with clock.stage(label) as st:
        done = _done(run_dir / "done.json", key)
        if done and (run_dir / "checkpoint_best.pt").is_file() and not args.force:
            st.skip(f"{run_dir}/checkpoint_best.pt exists (trained in {fmt_time(done['train_seconds'])})")
            return done
        if _prepare_run_dir(run_dir, key, args.force) == "resume":
            clock.say(f"   [{label}] resuming the interrupted run from {run_dir}/checkpoint_last.pt")
        clock.say(f"   [{label}] {updates} updates (log: {run_dir / 'train.log'})")
        seconds = run_logged(cmd, run_dir / "train.log", clock, label, args.threads, quiet=args.quiet, total=updates)
        train, dev = curves(run_dir / "train.log")
        reached = max([r["update"] for r in train + dev], default=0)
        rec = dict(key=key, train_seconds=round(seconds, 1), updates=updates, reached=reached)
        _write_json(run_dir / "done.json", rec)
        return rec


# --------------------------------------------------------------------------- corpus
def stage_corpus(args, P, clock) -> Path:
    with clock.stage("corpus") as st:
        if args.corpus:
            corpus = Path(args.corpus).resolve()
            for name in ("train.tsv", "test.tsv", "dev.tsv", "config.yaml", "dict.txt", "spm_joint.model"):
                if not (corpus / name).is_file():
                    raise DemoError(f"--corpus {corpus}: {name} missing (build it with build_ddtp_st.py --spm-vocab-size N)")
            asr_train_subsets(P, corpus)  # a missing train_asr_extra.tsv fails here, not beside a training expert
            st.skip(f"using --corpus {corpus}")
        else:
            corpus = args.out / "corpus"
            manifest = corpus / "MANIFEST.json"
            m = json.loads(manifest.read_text()) if manifest.is_file() and not args.rebuild_corpus else {}
            if (m.get("size") == P["corpus"] and m.get("seed") == args.seed
                    and (m.get("spm") or {}).get("requested_size") == P["spm_vocab_size"]
                    and (m.get("params") or {}).get("counts", {}) == (corpus_counts(P) or {})
                    and (m.get("params") or {}).get("train_voices", "seen") == P["train_voices"]
                    and (m.get("params") or {}).get("unseen_engine") in (None, P["unseen_engine"])):
                # (a corpus built before the unseen-engine split is reused as it is: the evaluation leaves it out)
                st.skip(f"{corpus} exists (size {P['corpus']}); --rebuild-corpus to re-synthesise")
            else:
                if shutil.which("espeak-ng") is None:
                    raise DemoError("espeak-ng not found: run `apt-get install -y espeak-ng` (it speaks the corpus)")
                if P["unseen_engine"] and shutil.which(P["unseen_engine"]) is None:
                    raise DemoError(f"{P['unseen_engine']} not found: run `apt-get install -y {P['unseen_engine']}` (it "
                                    f"speaks {ENGINE_SPLIT}, the test sentences by a synthesiser no training utterance "
                                    "comes from)")
                clock.say(f"   building DDTP-ST size={P['corpus']} (espeak-ng + fbank, {args.workers} workers) in {corpus}")
                try:
                    build(corpus, size=P["corpus"], seed=args.seed, workers=args.workers, counts=corpus_counts(P),
                          train_voices=P["train_voices"], unseen_engine=P["unseen_engine"],
                          spm_vocab_size=P["spm_vocab_size"],
                          overwrite=args.rebuild_corpus, progress=not args.quiet)
                except ParamsMismatch as e:
                    raise DemoError(f"{e} (or pass --rebuild-corpus)") from None
                except BuildError as e:
                    raise DemoError(f"building the corpus failed: {e}") from None
                if not args.force and any((args.out / d).exists() for d in ("asr", "expert", "students", "eval")):
                    clock.say("   the corpus was (re)built: the models and evaluations after it are redone")
                    args.force = True
        if ENGINE_SPLIT in args.splits and not (corpus / f"{ENGINE_SPLIT}.tsv").is_file():
            clock.say(f"   {corpus} has no {ENGINE_SPLIT} (built before it): not evaluated (--rebuild-corpus adds it)")
            args.splits = tuple(s for s in args.splits if s != ENGINE_SPLIT)
        write_asr_manifests(corpus, (*dev_unseen_split(args, corpus), *args.splits))
        return corpus


def evaluation_splits(args, P) -> tuple:
    """The splits every student is scored on: test; test_unseen unless --no-unseen (and a --corpus has it);
    ``ENGINE_SPLIT`` too where the preset has an ``unseen_engine`` (or the --corpus has that split). A corpus
    of the demo's own built before that split is found to lack it later (``stage_corpus`` drops it then)."""
    if args.no_unseen or (args.corpus and not (Path(args.corpus) / "test_unseen.tsv").is_file()):
        return ("test",)
    engine = (Path(args.corpus) / f"{ENGINE_SPLIT}.tsv").is_file() if args.corpus else bool(P["unseen_engine"])
    return (*TEST_SPLITS, ENGINE_SPLIT) if engine else TEST_SPLITS


def dev_unseen_split(args, corpus: Path):
    """``("dev_unseen",)`` where test_unseen is evaluated and the corpus has it (the ASR model's WER on held-out
    voices, measured on dev), else ``()``."""
    return ("dev_unseen",) if "test_unseen" in args.splits and (corpus / "dev_unseen.tsv").is_file() else ()


def corpus_counts(P):
    """The corpus builder's ``counts`` for this preset: the English-only utterances of the ASR stage."""
    return {ASR_EXTRA: P["asr_extra"]} if P["asr_extra"] else None


def asr_train_subsets(P, corpus: Path) -> str:
    """``--train-subset`` of the ASR stage: train_asr, plus the corpus' English-only ``train_asr_extra``."""
    if not P["asr_extra"]:
        return "train_asr"
    if not (corpus / f"{ASR_EXTRA}.tsv").is_file():
        raise DemoError(f"{corpus}: {ASR_EXTRA}.tsv missing: the ASR stage reads {P['asr_extra']} English-only "
                        f"utterances (build the corpus with build_ddtp_st.py --asr-extra {P['asr_extra']}, or "
                        "pass --asr-extra 0)")
    return f"train_asr,{ASR_EXTRA}"


def write_asr_manifests(corpus: Path, eval_splits):
    """``<split>_asr.tsv``: the same utterances with the English transcript as the target (speech →
    transcript), for the ASR stage and its transcription of train/dev (``eval_splits``: the others)."""
    for split in ("train", "dev", *eval_splits):
        out = corpus / f"{split}_asr.tsv"
        src = corpus / f"{split}.tsv"
        if out.is_file() and out.stat().st_mtime >= src.stat().st_mtime:
            continue
        rows = read_manifest(src)
        write_manifest(out, [dict(r, tgt_text=r["src_text"]) for r in rows], columns=list(rows[0]))


def model_config(args, corpus: Path) -> Path:
    """The data config of the ASR model and the students: the corpus' config.yaml, without SpecAugment
    unless --specaugment (a regulariser that only slows the few epochs a CPU demo trains)."""
    import yaml

    cfg = yaml.safe_load((corpus / "config.yaml").read_text(encoding="utf-8"))
    if not args.specaugment:
        cfg.pop("specaugment", None)
        transforms = cfg.get("transforms") or {}
        if "_train" in transforms:
            transforms["_train"] = [t for t in transforms["_train"] if t != "specaugment"]
    path = args.out / ("config_specaugment.yaml" if args.specaugment else "config.yaml")
    text = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- expert
def expert_text(args, P, corpus: Path, clock) -> Path:
    """The expert's sentencepiece-encoded training text (stem of .en/.de): the corpus' own train text,
    or (``expert_text_pairs``) the DDTP train pool — every length, not only plain sentences — with the
    corpus' train pairs included. Dev/test packages are never in it (the split is by package)."""
    n = P["expert_text_pairs"]
    if not n:
        return corpus / "text" / "train.spm"
    stem = args.out / "expert-text" / "train.spm"
    if all(Path(f"{stem}.{lang}").is_file() for lang in ("en", "de")):
        return stem
    import sentencepiece as spm

    try:
        translations = fetch_translations(corpus / "apt")
    except BuildError as e:
        raise DemoError(f"the expert's text needs the DDTP translation files ({corpus / 'apt'}): {e}") from None
    manifest = json.loads((corpus / "MANIFEST.json").read_text())
    text, pools = select_text(translations, "medium", manifest["seed"], {"train": 10 ** 9, "dev": 0, "test": 0})
    own_en = (corpus / "text" / "train.en").read_text(encoding="utf-8").splitlines()
    own_de = (corpus / "text" / "train.de").read_text(encoding="utf-8").splitlines()
    held_out = set((corpus / "text" / "test.en").read_text(encoding="utf-8").splitlines())
    held_out |= set((corpus / "text" / "dev.en").read_text(encoding="utf-8").splitlines())
    pairs = list(zip(own_en, own_de))
    seen = set(pairs)
    for p in text["train"]:
        if (p.en, p.de) not in seen and p.en not in held_out:
            seen.add((p.en, p.de))
            pairs.append((p.en, p.de))
    if n > 0:
        pairs = pairs[: max(n, len(own_en))]
    sp = spm.SentencePieceProcessor(model_file=str(corpus / "spm_joint.model"))
    stem.parent.mkdir(parents=True, exist_ok=True)
    for i, lang in enumerate(("en", "de")):
        atomic.write_lines(f"{stem}.{lang}", [" ".join(sp.encode(pair[i], out_type=str)) for pair in pairs])
    clock.say(f"   [expert] text: {len(pairs)} train pairs (DDTP train pool {pools['train']} + the corpus' "
              f"{len(own_en)}), packages disjoint from dev/test")
    return stem


def expert_flags(P):
    d, f, h, L = P["expert_dim"], P["expert_ffn"], P["expert_heads"], P["expert_layers"]
    return ["--arch", "transformer", "--encoder-layers", L, "--decoder-layers", L, "--encoder-embed-dim", d,
            "--decoder-embed-dim", d, "--encoder-ffn-embed-dim", f, "--decoder-ffn-embed-dim", f,
            "--encoder-attention-heads", h, "--decoder-attention-heads", h, "--share-all-embeddings",
            "--dropout", P["expert_dropout"], "--attention-dropout", P["expert_attention_dropout"],
            "--weight-decay", "0.0001"]


def _interval_flags(P, updates, every=None, keep=1):
    """Validate (dev loss curve) and save every ``every`` updates (default ``validate_every``), at least 4
    times a run, keeping the last ``keep`` interval checkpoints; progress lines every ``log_interval``
    updates, at least 10 a run; no per-epoch checkpoints."""
    every = max(1, min(every or P["validate_every"], updates // 4))
    log_every = max(1, min(P["log_interval"], updates // 10))
    return ["--validate-interval", "100000", "--save-interval", "100000", "--validate-interval-updates", every,
            "--save-interval-updates", every, "--keep-interval-updates", keep, "--no-epoch-checkpoints",
            "--log-interval", log_every]


def _stop_flags(hours):
    """fairseq's wall-clock cap (cumulative over resumes), or none."""
    return ["--stop-time-hours", hours] if hours else []


def stage_expert(args, P, corpus: Path, clock) -> Path:
    exp = args.out / "expert"
    updates = P["expert_updates"]
    bin_dir = args.out / "expert-bin"  # outside the run dir, which a fresh run empties
    stem = expert_text(args, P, corpus, clock)
    text = corpus / "text"
    prep_cmd = [_exe("imitkd-preprocess"), "--source-lang", "en", "--target-lang", "de", "--trainpref", stem,
                "--validpref", text / "dev.spm", "--testpref", f"{text / 'test.spm'},{text / 'train.spm'}",
                "--srcdict", corpus / "dict.txt", "--tgtdict", corpus / "dict.txt", "--destdir", bin_dir,
                "--workers", max(1, args.workers)]
    if not (bin_dir / "done").is_file() or (bin_dir / "done").read_text() != command_key(prep_cmd):
        shutil.rmtree(bin_dir, ignore_errors=True)
        run_logged(prep_cmd, args.out / "expert-bin.log", clock, "preprocess", args.threads, quiet=True)
        (bin_dir / "done").write_text(command_key(prep_cmd))
    if (bin_dir / "dict.de.txt").read_text(encoding="utf-8") != (corpus / "dict.txt").read_text(encoding="utf-8"):
        raise DemoError("the expert's target dictionary differs from the corpus dict.txt")
    cmd = [_exe("imitkd-train"), bin_dir, *expert_flags(P), *common_flags(args.seed),
           "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", P["expert_lr"],
           "--lr-scheduler", "inverse_sqrt", "--warmup-updates", min(P["expert_warmup"], updates // 2 or 1),
           "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
           "--max-tokens", P["expert_max_tokens"], "--max-update", updates, *_interval_flags(P, updates),
           "--save-dir", exp, *_stop_flags(P["expert_stop_hours"])]
    train_run(args, clock, exp, cmd, "expert", updates)
    return exp / "checkpoint_best.pt"


# --------------------------------------------------------------------------- speech models
def s2t_flags(P):
    """The architecture of the ASR model and of every student (so the ASR encoder transfers)."""
    d, f, h = P["dim"], P["ffn"], P["heads"]
    return ["--arch", "s2t_transformer_s", "--encoder-layers", P["enc_layers"], "--decoder-layers", P["dec_layers"],
            "--encoder-embed-dim", d, "--decoder-embed-dim", d, "--encoder-ffn-embed-dim", f,
            "--decoder-ffn-embed-dim", f, "--encoder-attention-heads", h, "--decoder-attention-heads", h,
            "--conv-channels", d, "--conv-kernel-sizes", P["conv_kernels"], "--dropout", "0.1",
            "--share-decoder-input-output-embed"]


def lr_schedule_flags(schedule: str, warmup: int, updates: int):
    """fairseq's learning-rate schedule: ``inverse_sqrt`` (peak at ``warmup``, then ∝ 1/√update) or
    ``linear`` (the same warm-up, then linear decay to 0 at ``updates``; needs a fixed number of updates,
    so no time cap)."""
    if schedule == "inverse_sqrt":
        return ["--lr-scheduler", "inverse_sqrt", "--warmup-updates", warmup]
    if schedule == "linear":
        return ["--lr-scheduler", "polynomial_decay", "--warmup-updates", warmup, "--total-num-update", updates,
                "--end-learning-rate", "0", "--power", "1"]
    raise DemoError(f"unknown learning-rate schedule {schedule!r} (inverse_sqrt or linear)")


def s2t_cmd(args, P, corpus, stage: str, train_subset, valid_subset, save_dir, seed=None):
    """fairseq-train of a speech model; ``stage`` ("asr" or "student") picks the preset's
    ``<stage>_lr``, ``_warmup``, ``_updates`` and ``_max_tokens`` (batch size in frames), and
    ``<stage>_average``/``_save_every`` (the interval checkpoints kept for averaging); ``seed``:
    fairseq's ``--seed`` (default ``--seed`` of the demo)."""
    updates, warmup = P[f"{stage}_updates"], P[f"{stage}_warmup"]
    schedule = P.get(f"{stage}_lr_schedule", "inverse_sqrt")
    if schedule == "linear" and P.get(f"{stage}_stop_hours"):
        raise DemoError(f"{stage}: a linear learning-rate decay needs a fixed number of updates, not a time cap")
    return [_exe("imitkd-train"), corpus, "--task", "speech_to_text_kd", "--config-yaml", model_config(args, corpus),
            "--train-subset", train_subset, "--valid-subset", valid_subset, *s2t_flags(P),
            *common_flags(args.seed if seed is None else seed),
            "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", P[f"{stage}_lr"],
            *lr_schedule_flags(schedule, min(warmup, updates // 2 or 1), updates),
            "--clip-norm", "10.0", "--max-tokens", P[f"{stage}_max_tokens"], "--max-update", updates,
            *_interval_flags(P, updates, P.get(f"{stage}_save_every"), max(1, P.get(f"{stage}_average", 0))),
            "--save-dir", save_dir]


def stage_asr(args, P, corpus: Path, clock) -> Path:
    """Speech → English transcript: label-smoothed NLL + CTC on the transcript (the target here)."""
    d = args.out / "asr"
    updates = P["asr_updates"]
    cmd = s2t_cmd(args, P, corpus, "asr", asr_train_subsets(P, corpus), "dev_asr", d)
    cmd += ["--criterion", "nll", "--label-smoothing", "0.1", "--ctc-weight", P["asr_ctc_weight"],
            *_stop_flags(P["asr_stop_hours"])]
    done = train_run(args, clock, d, cmd, "asr", updates)
    return asr_average(args, P, d, done, clock) if P.get("asr_average") else d / "checkpoint_best.pt"


def asr_average(args, P, d: Path, done: dict, clock) -> Path:
    """The mean of the ASR run's last ``asr_average`` interval checkpoints (``imitkd-average-checkpoints``,
    forked like the training runs: the demo itself never imports torch), made once per training run: its
    done-record names them, and a run that trains again writes a fresh record without them. The students'
    encoder and the transcripts come from it."""
    n, avg = P["asr_average"], d / "checkpoint_avg.pt"
    if avg.is_file() and len(done.get("averaged", ())) == n and not args.force:
        return avg
    cmd = [_exe("imitkd-average-checkpoints"), "--inputs", d, "--num-update-checkpoints", n, "--output", avg]
    proc = CHILDREN.run_decoding(cmd, args.threads)
    lines = [line for line in proc.stdout.splitlines() if line.strip()] or ["no output"]
    names = re.fullmatch(r"averaged \d+ checkpoints \((.*)\) -> .*", lines[-1])
    if proc.returncode != 0 or names is None:  # a damaged checkpoint, too few: one line, as every other stage's
        raise DemoError(f"asr: averaging its checkpoints failed: {lines[-1].removeprefix('error: ')}")
    names = names.group(1).split(", ")
    _write_json(d / "done.json", {**done, "averaged": names})
    clock.say(f"   [asr] averaged {', '.join(names)} -> {avg.name}")
    return avg


def generate(args, clock, cmd, log: Path, key: str, label: str) -> Path:
    """fairseq-generate into ``log`` unless it is there for the same key."""
    done = log.with_suffix(".done")
    if log.is_file() and done.is_file() and done.read_text() == key and not args.force:
        return log
    t = time.time()
    proc = CHILDREN.run_decoding(cmd, args.threads)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("$ " + " ".join(map(str, cmd)) + "\n" + proc.stdout, encoding="utf-8")
    if proc.returncode != 0:
        last = [line for line in proc.stdout.splitlines() if line.strip()][-1:] or ["no output"]
        raise DemoError(f"{label} failed (exit {proc.returncode}): {last[0]} -- log: {log}")
    done.write_text(key)
    clock.say(f"   [{label}] done in {fmt_time(time.time() - t)}")
    return log


def beam_flags(beam=5, lenpen=1.0):
    """fairseq-generate's --beam/--lenpen; no --lenpen at its default 1 (the commands, and so the keys of
    cached evaluations, stay those of plain beam search)."""
    return ["--beam", str(beam)] + (["--lenpen", str(lenpen)] if lenpen != 1.0 else [])


def gen_common(args, beam=5, lenpen=1.0):
    return [*beam_flags(beam, lenpen), "--max-tokens", "50000", "--cpu", "--num-workers", "0",
            "--required-batch-size-multiple", "1", "--max-len-a", "0", "--max-len-b", str(args.max_len)]


def _words(text: str):
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def word_error_rate(hyps, refs) -> float:
    """Corpus WER in %, on lowercased words without punctuation."""
    import editdistance

    errors = sum(editdistance.eval(_words(h), _words(r)) for h, r in zip(hyps, refs))
    return 100.0 * errors / max(1, sum(len(_words(r)) for r in refs))


#: how the ASR model transcribes: attention beam search (imitkd-generate), its CTC head's best path
#: (ctc_transcribe.py) or both jointly (ctc_transcribe.py --joint-beam: the attention n-best and the best
#: path rescored by λ·log p_CTC + (1−λ)·log p_att + b·tokens); the one with the lowest dev WER transcribes
#: train and the test splits. Joint decoding's beam, λ and b are the preset's joint_beam, joint_ctc_weight and
#: joint_length_bonus, chosen on dev: 0.5 and 1.0 with medium's ASR model at e20bd7e (28.1 % dev WER against
#: 45.8 % best path and 53.0 % beam search; beam 4: 30.5 %, 8: 28.1 %) and small's at fba3a31 (59.6 % against
#: 62.3 % and 74.8 %); medium's at fdb378b: beam 32, λ 0.3, b 1.5 (dev WER 21.3 % against 25.0 % with beam 8,
#: 0.5, 1.0; grid of beam 8/16/32, λ 0.2–0.7, b 0.5–2.0 in RESULTS.md); small's at 152e8e7: beam 32, λ 0.5, b 1.5
#: (dev WER 49.4 % against 54.0 % with beam 4, 0.5, 1.0; RESULTS.md, small section)
ASR_DECODINGS = ("beam", "ctc", "joint")


def joint_flags(P) -> list:
    """ctc_transcribe.py's joint decoding flags of a preset."""
    return ["--joint-beam", str(P["joint_beam"]), "--joint-ctc-weight", str(P["joint_ctc_weight"]),
            "--joint-length-bonus", str(P["joint_length_bonus"])]


def stage_transcripts(args, P, corpus: Path, asr_ckpt: Path, clock) -> dict:
    """The ASR model transcribes dev in every way (``ASR_DECODINGS``) and, with the decoding of the lowest
    dev WER, train (→ train_kdt.tsv / dev_kdt.tsv, src_text = ASR) and the test splits (→ WER, returned);
    also dev_unseen where there is one (its WER goes to decoding.json: held-out voices, measured on dev)."""
    tdir = args.out / "transcripts"
    asr_key = _done_key(asr_ckpt.parent / "done.json")

    def transcribe(split, decoding):
        if decoding in ("ctc", "joint"):
            cmd = [sys.executable, CTC_SCRIPT, corpus, "--config-yaml", model_config(args, corpus), "--gen-subset",
                   f"{split}_asr", "--path", asr_ckpt, "--cpu"]
            if decoding == "joint":
                cmd += joint_flags(P)
            log = tdir / f"asr.{split}.{decoding}.log"
        else:
            cmd = [_exe("imitkd-generate"), corpus, "--task", "speech_to_text_kd", "--config-yaml",
                   model_config(args, corpus), "--gen-subset", f"{split}_asr", "--path", asr_ckpt,
                   *gen_common(args, P["transcribe_beam"] if split in ("train", "dev") else 5)]
            log = tdir / f"asr.{split}.log"
        key = command_key(cmd, asr_key)
        return lambda: generate(args, clock, cmd, log, key, f"ASR transcribes {split} ({decoding})")

    def split_wer(split, log):
        refs = [r["src_text"] for r in read_manifest(corpus / f"{split}.tsv")]
        hyps = parse_hypotheses(log.read_text(encoding="utf-8"), len(refs), log)
        return round(word_error_rate(hyps, refs), 2), hyps

    with clock.stage("transcripts"), Lanes(args.lanes) as lanes:
        dev_runs = {d: lanes.submit(transcribe("dev", d)) for d in ASR_DECODINGS}
        dev_logs = {d: run.result() for d, run in dev_runs.items()}
        dev_wer = {d: split_wer("dev", dev_logs[d])[0] for d in ASR_DECODINGS}
        decoding = min(ASR_DECODINGS, key=lambda d: dev_wer[d])  # a tie keeps beam search
        clock.say(f"   ASR decoding chosen on dev: {decoding} (dev WER "
                  + ", ".join(f"{d} {w:.1f} %" for d, w in dev_wer.items()) + ")")
        runs = {split: lanes.submit(transcribe(split, decoding))
                for split in ("train", *dev_unseen_split(args, corpus), *args.splits)}
        logs = {**{split: run.result() for split, run in runs.items()}, "dev": dev_logs[decoding]}
        for split in ("train", "dev"):
            _generated_manifest(corpus / f"{split}.tsv", corpus / f"{split}_kdt.tsv", ["-a", logs[split]], clock)
        wer = {}
        (args.out / "eval").mkdir(parents=True, exist_ok=True)
        for split in args.splits:
            wer[split], hyps = split_wer(split, logs[split])
            (args.out / "eval" / f"asr.{split}.hyp").write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
        clock.say("   ASR WER: " + ", ".join(f"{s} {w:.1f} %" for s, w in wer.items()))
        _write_json(tdir / "wer.json", wer)
        unseen = {"dev_unseen_wer": split_wer("dev_unseen", logs["dev_unseen"])[0]} if "dev_unseen" in logs else {}
        _write_json(tdir / "decoding.json", dict(decoding=decoding, dev_wer=dev_wer, **unseen))
        return wer


def stage_seqkd_data(args, corpus: Path, expert_ckpt: Path, clock) -> Path:
    """Sequence-level KD data (medium): the expert translates the train text (beam 5) → train_seqkd.tsv."""
    cmd = [_exe("imitkd-generate"), args.out / "expert-bin", "--path", expert_ckpt, "--gen-subset",
           "test1", "--source-lang", "en", "--target-lang", "de", "--post-process", "sentencepiece",
           *gen_common(args)]
    key = command_key(cmd, _done_key(expert_ckpt.parent / "done.json"))
    with clock.stage("seqkd data"):
        log = generate(args, clock, cmd, args.out / "transcripts" / "expert.train.log", key, "expert translates train")
        _generated_manifest(corpus / "train.tsv", corpus / "train_seqkd.tsv", ["-o", log], clock)
    return corpus / "train_seqkd.tsv"


def _generated_manifest(src: Path, out: Path, flags, clock):
    cmd = [sys.executable, DATASET_SCRIPT, "-d", src, *flags, "-O", out]
    proc = CHILDREN.run(cmd)
    if proc.returncode != 0:
        raise DemoError(f"{DATASET_SCRIPT.name} failed: {proc.stdout.strip().splitlines()[-1:]}")
    clock.say(f"   wrote {out.name} ({' '.join(map(str, flags[:1]))}: {Path(flags[1]).name})")


TRAIN_SUBSETS = {"gold": "train", "asr": "train_kdt", "seqkd": "train_seqkd"}


def student_cmd(args, P, corpus: Path, expert_ckpt: Path, asr_ckpt: Path, method: Method, save_dir: Path,
                seed=None):
    """The fairseq-train command of a student: encoder from the ASR model, CTC on the transcript."""
    cmd = s2t_cmd(args, P, corpus, "student", TRAIN_SUBSETS[method.data], "dev", save_dir, seed)
    cmd += ["--load-pretrained-encoder-from", asr_ckpt, "--encoder-freezing-updates", P["encoder_freezing"],
            "--ctc-weight", P["student_ctc_weight"], "--criterion", method.criterion, *method.extra]
    if method.criterion != "nll":
        cmd += ["--expert", expert_ckpt, "--path", args.out / "expert-bin",
                "--expert-sentencepiece-model", corpus / "spm_joint.model"]
    if method.imitation and P["beta_hold"]:
        cmd += ["--beta-hold-updates", P["beta_hold"]]
    # every validation also decodes dev greedily (the dev BLEU curve); with student_select "bleu" that
    # BLEU, not the teacher-forced gold NLL, picks checkpoint_best.pt
    cmd += ["--eval-bleu", "--eval-bleu-args", json.dumps(dict(beam=1, max_len_a=0, max_len_b=args.max_len))]
    if P["student_select"] == "bleu":
        cmd += ["--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric"]
    return cmd


def student_key(args, key: str, seed: int) -> str:
    """The name of a student run (its directory under students/, its evaluations' file stem): the method's
    key for the demo's ``--seed``, ``<key>.seed<N>`` for each of ``--student-seeds``."""
    return key if seed == args.seed else f"{key}.seed{seed}"


def stage_student(args, P, corpus: Path, expert_ckpt: Path, asr_ckpt: Path, method: Method, clock,
                  seed: int) -> dict:
    name = student_key(args, method.key, seed)
    sdir = args.out / "students" / name
    cmd = student_cmd(args, P, corpus, expert_ckpt, asr_ckpt, method, sdir, seed)
    deps = [asr_ckpt.parent / "done.json"] + ([expert_ckpt.parent / "done.json"] if method.criterion != "nll" else [])
    if method.data != "gold":  # its manifest depends on the transcripts' decoding (or the expert's translations)
        deps.append(corpus / f"{TRAIN_SUBSETS[method.data]}.tsv")
    rec = train_run(args, clock, sdir, cmd, f"student {name}", P["student_updates"], deps)
    return dict(rec, criterion=method.criterion, seed=seed)


# --------------------------------------------------------------------------- evaluation
def parse_hypotheses(stdout: str, n: int, log: Path):
    """Detokenized ``D-<index>`` lines of fairseq-generate, in dataset order."""
    hyps = {}
    for line in stdout.splitlines():
        if line.startswith("D-"):
            head, _, text = line.partition("\t")
            _score, _, text = text.partition("\t")
            hyps[int(head[2:])] = text.strip()
    missing = [i for i in range(n) if i not in hyps]
    if missing:
        raise DemoError(f"generation produced {len(hyps)} of {n} hypotheses (missing e.g. #{missing[0]}): see {log}")
    return [hyps[i] for i in range(n)]


def score(hyps, refs):
    import sacrebleu

    return dict(bleu=round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2),
                chrf=round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2))


def evaluate(args, clock, system: str, split: str, gen_cmd, refs, key_parts) -> dict:
    edir = args.out / "eval"
    edir.mkdir(parents=True, exist_ok=True)
    res_path, hyp_path = edir / f"{system}.{split}.json", edir / f"{system}.{split}.hyp"
    key = command_key(gen_cmd, *key_parts)
    done = _done(res_path, key)
    if done and hyp_path.is_file() and not args.force:
        return done
    t = time.time()
    log = generate(args, clock, gen_cmd, edir / f"{system}.{split}.log", key, f"decoding: {system} on {split}")
    hyps = parse_hypotheses(log.read_text(encoding="utf-8"), len(refs), log)
    hyp_path.write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    rec = dict(key=key, system=system, split=split, n=len(hyps), seconds=round(time.time() - t, 1), **score(hyps, refs))
    _write_json(res_path, rec)
    clock.say(f"   {system} on {split}: BLEU {rec['bleu']:.2f}  chrF {rec['chrf']:.2f}")
    return rec


def evaluate_expert(args, clock, expert_ckpt: Path) -> dict:
    """The ceiling: the expert translating the English *text* of test."""
    refs = (args.corpus / "text" / "test.de").read_text(encoding="utf-8").splitlines()
    cmd = [_exe("imitkd-generate"), args.out / "expert-bin", "--path", expert_ckpt, "--gen-subset", "test",
           "--source-lang", "en", "--target-lang", "de", "--post-process", "sentencepiece", *gen_common(args)]
    return evaluate(args, clock, "expert", "test", cmd, refs, [_done_key(expert_ckpt.parent / "done.json")])


def student_generate_cmd(args, split: str, ckpt: Path, decoding: str = REFERENCE_DECODING):
    """fairseq-generate of a student checkpoint on the speech of ``split`` (``DECODINGS[decoding]``). The
    data config's bpe_tokenizer (sentencepiece) detokenizes the D- lines; no --post-process."""
    return [_exe("imitkd-generate"), args.corpus, "--task", "speech_to_text_kd", "--config-yaml",
            model_config(args, args.corpus), "--gen-subset", split, "--path", ckpt,
            *gen_common(args, **DECODINGS[decoding])]


def system_name(key: str, decoding: str) -> str:
    """The file stem of a student's evaluation under ``decoding`` (beam 5: the key itself)."""
    return key if decoding == REFERENCE_DECODING else f"{key}.{decoding}"


def evaluate_student(args, clock, key: str, split: str, train_key: str, decoding: str = REFERENCE_DECODING) -> dict:
    """A student translating the speech of ``split`` with ``DECODINGS[decoding]``."""
    refs = [r["tgt_text"] for r in read_manifest(args.corpus / f"{split}.tsv")]
    cmd = student_generate_cmd(args, split, args.out / "students" / key / "checkpoint_best.pt", decoding)
    return evaluate(args, clock, system_name(key, decoding), split, cmd, refs, [train_key])


#: a decoding is chosen on dev only if at least this share of its dev translations differ from one another: one
#: that repeats stock sentences has collapsed (the small AVX2 run at bb4b4bb: ImitKD-optimal's beam 5 with
#: lenpen 2 had the best dev BLEU with 207 distinct of 223, and gave 193 of 204 on test; greedy: 214 and 198)
MIN_DISTINCT_DEV = 0.95


def choose_decoding(dev_scores: dict, distinct: dict) -> str:
    """The decoding with the best dev BLEU among those whose dev translations are at least ``MIN_DISTINCT_DEV``
    distinct (``distinct``: {decoding: distinct dev translations / dev sentences}), among all of them if none is;
    the first of ``dev_scores`` (in ``--decodings`` order) on a tie."""
    eligible = [d for d in dev_scores if distinct[d] >= MIN_DISTINCT_DEV] or list(dev_scores)
    return max(eligible, key=lambda d: dev_scores[d]["bleu"])


def evaluation_jobs(args, clock, key: str) -> dict:
    """The decodings of the student run ``key`` as ``run_graph`` jobs, after its training job (also named
    ``key``; the decodings' done-records depend on its record's ``key``): dev under every decoding of ``--decodings`` (a job each); then,
    under the best one (``choose_decoding``), each test split (a job each; test also under beam 5, the fixed
    reference); last ``eval <key>``, which decodes nothing and returns {"dev": {decoding: scores},
    "dev_distinct": {decoding: share of distinct dev translations}, "chosen": decoding, split: scores,
    "reference:test": scores}. As separate jobs, a lane that has nothing else to do takes a decoding of the
    other lane's student (the last student's five decodings ran in one lane while the other waited)."""
    dev_jobs = {d: f"eval {key} dev {d}" for d in args.decodings}
    split_jobs = {split: f"eval {key} {split}" for split in args.splits}

    def dev(r, decoding):
        return evaluate_student(args, clock, key, "dev", r[key]["key"], decoding)

    def chosen(r):
        scores = {d: r[job] for d, job in dev_jobs.items()}
        distinct = {d: distinct_outputs(args, rec["system"], "dev") / rec["n"] for d, rec in scores.items()}
        return choose_decoding(scores, distinct), scores, distinct

    def test_split(r, split):
        decoding = chosen(r)[0]
        out = {split: evaluate_student(args, clock, key, split, r[key]["key"], decoding)}
        if split == "test":  # (the same decoding twice when the chosen one is the reference: decoded once)
            out["reference:test"] = evaluate_student(args, clock, key, "test", r[key]["key"], REFERENCE_DECODING)
        return out

    def gather(r):
        decoding, scores, distinct = chosen(r)
        out = {"dev": scores, "dev_distinct": distinct, "chosen": decoding}
        for job in split_jobs.values():
            out.update(r[job])
        return out

    jobs = {job: (lambda r, d=d: dev(r, d), (key,)) for d, job in dev_jobs.items()}
    jobs.update({job: (lambda r, split=split: test_split(r, split), tuple(dev_jobs.values()))
                 for split, job in split_jobs.items()})
    jobs[f"eval {key}"] = (gather, tuple(split_jobs.values()))
    return jobs


def training_cost(method: Method) -> int:
    """A student's training time, ranked: ImitKD (its rollouts; small demo at 38c8ee8: 13:46–14:28) > word
    KD (the expert's forward; 12:24–13:08) > NLL (10:21). ``training_graph`` starts the ready students in
    this order (ties: the preset's), so the two lanes end within one short run of each other; in the
    method order the ImitKD runs came last and one lane finished 6 minutes after the other."""
    return 2 if method.imitation else 0 if method.criterion == "nll" else 1


def comma_list(text: str) -> tuple:
    """A comma-separated flag's items, stripped, empty ones dropped: "a, b," -> ("a", "b")."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


def seeded_methods(args, P) -> tuple:
    """The students that ``--student-seeds`` trains again: ``--seed-methods`` (checked against the preset's
    students in ``main``), or every student."""
    return args.seed_methods or P["methods"]


def training_graph(args, P, corpus: Path, clock) -> dict:
    """Every stage after the corpus as ``run_graph`` jobs: the ASR model and the expert; the transcripts
    (ASR only); the SeqKD data (expert only); every student as soon as what it reads is there (NLL: the ASR
    model; KD: and the expert; KDT/ImitKDT: and the transcripts), the costliest first (``training_cost``),
    each followed by its decodings (``evaluation_jobs``: before any later student's training, so a lane never
    waits for the slowest student before it decodes); the expert's ceiling; last, every student of
    ``--seed-methods`` again with each of ``--student-seeds`` (jobs ``<key>.seed<N>``)."""
    def student(method, r, seed=args.seed):
        expert_ckpt = r.get("expert", args.out / "expert" / "checkpoint_best.pt")  # NLL: not read
        return stage_student(args, P, corpus, expert_ckpt, r["asr"], method, clock, seed)

    jobs = {"asr": (lambda r: stage_asr(args, P, corpus, clock), ()),
            "expert": (lambda r: stage_expert(args, P, corpus, clock), ()),
            "transcripts": (lambda r: stage_transcripts(args, P, corpus, r["asr"], clock), ("asr",))}
    methods = [METHODS[key] for key in P["methods"]]
    if any(m.data == "seqkd" for m in methods):
        jobs["seqkd data"] = (lambda r: stage_seqkd_data(args, corpus, r["expert"], clock), ("expert",))
    needs = {"gold": (), "asr": ("transcripts",), "seqkd": ("seqkd data",)}
    by_cost = sorted(methods, key=training_cost, reverse=True)  # the longest first, so both lanes end together
    for m in by_cost:
        deps = ("asr",) + (("expert",) if m.criterion != "nll" else ()) + needs[m.data]
        jobs[m.key] = (lambda r, m=m: student(m, r), deps)
        jobs.update(evaluation_jobs(args, clock, m.key))
    jobs["expert ceiling"] = (lambda r: evaluate_expert(args, clock, r["expert"]), ("expert",))
    seeded = [m for m in by_cost if m.key in seeded_methods(args, P)]
    for seed in args.student_seeds:
        for m in seeded:
            name = student_key(args, m.key, seed)
            jobs[name] = (lambda r, m=m, seed=seed: student(m, r, seed), jobs[m.key][1])
            jobs.update(evaluation_jobs(args, clock, name))
    return jobs


def run_stages(args, P, corpus: Path, clock):
    """``training_graph`` run in ``args.lanes`` lanes. Returns ({key: training record}, {(key, split):
    scores}, {key: its evaluation record (``evaluation_jobs``)}, the ASR WER per test split, {(key, seed):
    evaluation record} for ``--seed`` and every one of ``--student-seeds``)."""
    done = run_graph(training_graph(args, P, corpus, clock), args.lanes)
    students = {key: done[key] for key in P["methods"]}
    evals = {key: done[f"eval {key}"] for key in P["methods"]}
    results = {(key, s): evals[key][s] for key in P["methods"] for s in args.splits}
    results[("expert", "test")] = done["expert ceiling"]
    by_seed = {(key, seed): done[f"eval {student_key(args, key, seed)}"]
               for key in seeded_methods(args, P) for seed in (args.seed, *args.student_seeds)}
    return students, results, evals, done["transcripts"], by_seed


def paired_bootstrap(args, corpus: Path, split: str, baseline: str, system: str) -> float:
    """p-value of sacrebleu's paired bootstrap test (1000 resamples, seed 12345) for BLEU of
    ``system`` against ``baseline`` on ``split`` (both: file stems under eval/)."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    refs = [r["tgt_text"] for r in read_manifest(corpus / f"{split}.tsv")]
    hyps = {s: (args.out / "eval" / f"{s}.{split}.hyp").read_text(encoding="utf-8").splitlines()
            for s in (baseline, system)}
    test = PairedTest([(baseline, hyps[baseline]), (system, hyps[system])], {"BLEU": BLEU()}, [refs],
                      test_type="bs", n_samples=1000)
    _, results = test()
    return float(results["BLEU"][1].p_value)


#: the label of test under the fixed decoding in ``significance``'s keys (results.json: "test/beam5:a-vs-b")
FIXED_TEST = f"test/{REFERENCE_DECODING}"


def split_label(split: str) -> str:
    """A split as results.md names it: ``test``, ``test_unseen``, ``test, beam5`` (``FIXED_TEST``)."""
    return split.replace("/", ", ")


def significance(args, P, corpus: Path, results) -> dict:
    """{(split, method, baseline): p} for every method vs NLL and ImitKD-full vs word-KD, each under the
    decoding it was scored with (``results``), and on test also with every student under ``REFERENCE_DECODING``
    (split ``FIXED_TEST``): that comparison involves no choice of decoding on dev, and so none of its noise."""
    pairs = [(s, b) for s, b in [(m, "nll") for m in P["methods"] if m != "nll"] + [("imit_kd_CE", "word_kd")]
             if s in P["methods"] and b in P["methods"]]
    fixed = lambda key: system_name(key, REFERENCE_DECODING)  # noqa: E731
    comparisons = {(split, s, b): (split, results[(b, split)]["system"], results[(s, split)]["system"])
                   for split in args.splits for s, b in pairs}  # args.splits always holds test
    comparisons.update({(FIXED_TEST, s, b): ("test", fixed(b), fixed(s)) for s, b in pairs})
    # a pair whose chosen decodings on test are both beam 5 is the same comparison twice: tested once
    tests = {c: paired_bootstrap(args, corpus, *c) for c in set(comparisons.values())}
    return {label: tests[c] for label, c in comparisons.items()}


# --------------------------------------------------------------------------- report
def curves(log: Path):
    """From a training log: train_inner records (update, beta, rollout_frac, loss) and dev records
    (update, gold NLL in bits, the validation loss, greedy BLEU or None)."""
    records = parse_json_log(log.read_text(encoding="utf-8").splitlines()) if log.is_file() else []
    train, dev = [], []
    for tag, s in records:
        if tag == "train_inner":
            train.append(dict(update=int(s.get("num_updates", 0)), beta=_f(s.get("beta")),
                              rollout_frac=_f(s.get("rollout_frac")), loss=_f(s.get("loss"))))
        elif tag != "train":
            p = f"{tag}_"
            dev.append(dict(update=int(s.get(p + "num_updates", 0)), nll=_f(s.get(p + "nll_loss", s.get(p + "loss"))),
                            loss=_f(s.get(p + "loss")), bleu=_f(s.get(p + "bleu"))))
    dedup = {}
    for r in dev:  # a resumed run may repeat an update count: keep the last
        dedup[r["update"]] = r
    return train, sorted(dedup.values(), key=lambda r: r["update"])


def best_update(dev, select: str):
    """The update of checkpoint_best.pt: fairseq's best validation (lowest loss, or highest BLEU with
    ``select`` "bleu"; the later one on a tie, as fairseq's ``<=``); None without validations."""
    metric = "bleu" if select == "bleu" else "loss"
    pts = [r for r in dev if r[metric] is not None]
    if not pts:
        return None
    sign = -1 if metric == "bleu" else 1
    return min(pts, key=lambda r: (sign * r[metric], -r["update"]))["update"]


def _f(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def distinct_outputs(args, system: str, split: str = "test") -> int:
    """How many different hypotheses a system produced (a collapsed student repeats one sentence)."""
    return len(set((args.out / "eval" / f"{system}.{split}.hyp").read_text(encoding="utf-8").splitlines()))


@functools.lru_cache(maxsize=None)
def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+uncommitted changes" if dirty else "") if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def _machine(args) -> str:
    """The CPU, its cores, and what ``--expert-dtype/--rollout-dtype auto`` meant in the students' runs: read
    from their logs (the expert's "runs on cpu in fp32 (--expert-dtype auto)"; rollouts resolve ``auto`` the
    same way), so a run resumed on another machine says what its students trained with; the demo itself
    never imports torch (that took ≈ 3–5 s of every report)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    auto = set()
    for log in sorted((args.out / "students").glob("*/train.log")):
        auto.update(re.findall(r" runs on \S+ in (.+?) \(--expert-dtype auto\)", log.read_text(errors="replace")))
    auto = " and ".join(sorted(auto)) or "a precision its logs do not name"
    return f"{cpu}, {os.cpu_count()} cores, expert and rollouts in {auto} (`--expert-dtype/--rollout-dtype auto` here)"


def seeded_names(args, P) -> str:
    """Which students the seed table covers, as its note says it: "Every student" or their names."""
    keys = seeded_methods(args, P)
    return "Every student" if tuple(keys) == tuple(P["methods"]) else ", ".join(METHODS[k].name for k in keys)


def seed_table(args, P, by_seed):
    """Markdown lines and a JSON record: the BLEU of every student of ``seeded_methods`` on each test split
    under each seed (each run scored with the decoding of its own best dev BLEU), on test with
    ``REFERENCE_DECODING`` (``FIXED_TEST``), their mean and sample standard deviation."""
    import statistics

    seeds = (args.seed, *args.student_seeds)
    columns = (*args.splits, FIXED_TEST)
    head = ["method"] + [h for s in columns for h in (f"BLEU {split_label(s)}, seed {' / '.join(map(str, seeds))}",
                                                       f"mean ± sd ({split_label(s)})")]
    head += ["dev BLEU, mean ± sd"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    record = {}
    score = lambda ev, split: (ev["dev"][ev["chosen"]] if split == "dev"  # noqa: E731
                               else ev["reference:test"] if split == FIXED_TEST else ev[split])["bleu"]
    for key in seeded_methods(args, P):
        evs = [by_seed[(key, seed)] for seed in seeds]
        cells, rec = [], dict(seeds=list(seeds))
        for split in (*columns, "dev"):
            vals = [score(ev, split) for ev in evs]
            mean, sd = statistics.mean(vals), statistics.stdev(vals)
            rec[split] = dict(bleu=vals, mean=round(mean, 2), sd=round(sd, 2))
            spread = f"{mean:.2f} ± {sd:.2f}"
            cells += [spread] if split == "dev" else [" / ".join(f"{v:.2f}" for v in vals), spread]
        record[key] = rec
        lines.append(f"| {METHODS[key].name} | " + " | ".join(cells) + " |")
    return lines, record


def timing_records(out: Path) -> list:
    """The records of the invocations before this one in ``out/timings.json`` ([] if none or unreadable)."""
    try:
        return list(json.loads((out / "timings.json").read_text()).get("runs", []))
    except (OSError, ValueError, AttributeError, TypeError):
        return []


def earlier_invocations(out: Path) -> str:
    """The invocations before this one that worked in ``out`` (timings.json), as the report's Run note names
    them: "<started> (commit <c>, <wall> wall)"; a resumed demo's table may come from them. "" if none."""
    return "; ".join(f"{r['started']} (" + (f"commit {r['commit']}, " if r.get("commit") else "")
                     + f"{fmt_time(r['total_seconds'])} wall)"
                     for r in timing_records(out) if isinstance(r, dict) and {"started", "total_seconds"} <= r.keys())


def write_report(args, P, corpus, results, students, evals, wer, pvalues, total_seconds, by_seed=None):
    n_train = len(read_manifest(corpus / "train.tsv"))
    n_test = len(read_manifest(corpus / "test.tsv"))
    n_extra = len(read_manifest(corpus / f"{ASR_EXTRA}.tsv")) if P["asr_extra"] else 0
    earlier = earlier_invocations(args.out)
    splits = args.splits
    head = ["method"] + [f"{m} {s}" for s in splits for m in ("BLEU", "chrF")]
    head += [f"p vs NLL ({s})" for s in splits]
    head += ["decoding (dev BLEU)", f"BLEU test, {REFERENCE_DECODING}", f"p vs NLL (test, {REFERENCE_DECODING})",
             "distinct (test)", "best dev NLL (bits)", "checkpoint (update)", "train time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = []
    for key in P["methods"]:
        m = METHODS[key]
        _, dev = curves(args.out / "students" / key / "train.log")
        best = min((r["nll"] for r in dev if r["nll"] is not None), default=None)
        cells = [f"{results[(key, s)][k]:.2f}" for s in splits for k in ("bleu", "chrf")]
        ps = {s: pvalues.get((s, key, "nll")) for s in splits}
        cells += ["–" if ps[s] is None else f"{ps[s]:.3f}" for s in splits]
        ev = evals[key]
        chosen = ev["chosen"]
        distinct = distinct_outputs(args, results[(key, "test")]["system"])
        t = students[key]["train_seconds"]
        ckpt_update = best_update(dev, P["student_select"])
        p_fixed = pvalues.get((FIXED_TEST, key, "nll"))
        cells += [f"{chosen} ({ev['dev'][chosen]['bleu']:.2f})", f"{ev['reference:test']['bleu']:.2f}",
                  "–" if p_fixed is None else f"{p_fixed:.3f}", f"{distinct}/{n_test}",
                  f"{best:.3f}" if best is not None else "-",
                  "-" if ckpt_update is None else str(ckpt_update), fmt_time(t)]
        lines.append(f"| {m.name} | " + " | ".join(cells) + " |")
        rows.append(dict(method=m.name, key=key, criterion=m.criterion, data=m.data, train_seconds=t, best_dev_nll=best,
                         checkpoint_update=ckpt_update, dev_bleu_curve=[(r["update"], r["bleu"]) for r in dev],
                         distinct_test=distinct, p_vs_nll={**ps, FIXED_TEST: p_fixed}, decoding=chosen,
                         dev_bleu={d: r["bleu"] for d, r in ev["dev"].items()},
                         dev_distinct={d: round(v, 4) for d, v in ev["dev_distinct"].items()},
                         **{f"bleu_test_{REFERENCE_DECODING}": ev["reference:test"]["bleu"]},
                         **{f"{k}_{s}": results[(key, s)][k] for s in splits for k in ("bleu", "chrf")}))
    ex = results[("expert", "test")]
    ex_time = json.loads((args.out / "expert" / "done.json").read_text()).get("train_seconds", 0)
    _, expert_dev = curves(args.out / "expert" / "train.log")
    ex_best = min((r["nll"] for r in expert_dev if r["nll"] is not None), default=None)
    cells = [f"{ex['bleu']:.2f}", f"{ex['chrf']:.2f}"] + ["–", "–"] * (len(splits) - 1) + ["–"] * len(splits)
    cells += [REFERENCE_DECODING, f"{ex['bleu']:.2f}", "–", f"{distinct_outputs(args, 'expert')}/{n_test}",
              f"{ex_best:.3f}" if ex_best is not None else "-", str(best_update(expert_dev, "loss") or "-"),
              fmt_time(ex_time)]
    lines.append("| expert NMT, reads the English *text* (ceiling) | " + " | ".join(cells) + " |")
    asr_done = json.loads((args.out / "asr" / "done.json").read_text())
    expert_done = json.loads((args.out / "expert" / "done.json").read_text())
    asr_dec = json.loads((args.out / "transcripts" / "decoding.json").read_text())
    joint = (f"joint CTC/attention rescoring of a beam of {P['joint_beam']}, λ = {P['joint_ctc_weight']}, "
             f"length bonus {P['joint_length_bonus']}")
    asr_how = ({"ctc": "CTC best path", "beam": "beam 5", "joint": joint}[asr_dec["decoding"]]
               + ", chosen on dev: dev WER "
               + " vs ".join(f"{w:.1f} % ({d})" for d, w in asr_dec["dev_wer"].items())
               + (f"; dev_unseen (held-out voices) {asr_dec['dev_unseen_wer']:.1f} %"
                  if "dev_unseen_wer" in asr_dec else ""))
    extra = [f"ImitKD-full vs word-KD: p = {pvalues[(s, 'imit_kd_CE', 'word_kd')]:.3f} ({split_label(s)})"
             for s in (*splits, FIXED_TEST) if (s, "imit_kd_CE", "word_kd") in pvalues]
    expert_pairs = sum(1 for _ in open(args.out / "expert-text" / "train.spm.en", encoding="utf-8")) \
        if P["expert_text_pairs"] else n_train
    notes = [
        f"ASR (speech → English, the students' encoder init): WER {', '.join(f'{w:.1f} % on {s}' for s, w in wer.items())}"
        f" ({asr_how}; lowercased words without punctuation), {asr_done.get('reached')} updates, trained in "
        f"{fmt_time(asr_done.get('train_seconds', 0))} on the {n_train} training utterances"
        + (f" and {n_extra} English-only ones ({ASR_EXTRA}.tsv)" if n_extra else "")
        + (f"; the mean of its checkpoints {', '.join(asr_done['averaged'])}." if asr_done.get("averaged") else "."),
        "Paired bootstrap (sacrebleu, 1000 resamples) on BLEU: " + ("; ".join(extra) if extra else "–") + ".",
        f"DDTP-ST en→de, corpus size {P['corpus']}: {n_train} training utterances, {n_test} test utterances "
        f"(test_unseen: the same sentences, held-out voices"
        + (f"; {ENGINE_SPLIT}: the same sentences, spoken by flite, a synthesiser no training utterance comes from"
           if ENGINE_SPLIT in splits else "") + f"); joint sentencepiece vocabulary of {P['spm_vocab_size']}.",
        f"Students and ASR: s2t_transformer {P['enc_layers']}+{P['dec_layers']} layers, d={P['dim']}, conv "
        f"{P['conv_kernels']}; students {P['student_updates']} updates each (batches of ≤{P['student_max_tokens']} frames), "
        f"encoder from the ASR model, frozen for {P['encoder_freezing']} updates, CTC weight "
        f"{P['student_ctc_weight']} on the transcript; seed {args.seed}; the checkpoint with the best dev "
        + ("BLEU (greedy, every validation)" if P["student_select"] == "bleu" else "NLL") + "; "
        "detokenized sacreBLEU and chrF (sacrebleu API).",
        "Decoding: each student is scored (BLEU, chrF, p-values, distinct) with the decoding that has its best dev "
        f"BLEU among {', '.join(f'{d} ({decoding_flags(d)})' for d in args.decodings)}, of those whose dev "
        f"translations are at least {MIN_DISTINCT_DEV:.0%} distinct (all of them if none is); the "
        f"'BLEU test, {REFERENCE_DECODING}' column is every student with {REFERENCE_DECODING} (no choice on dev, "
        "so none of its noise: the dev BLEU of one decoding is a single draw, that of the greedy decoding is also "
        "the maximum that chose the checkpoint), with its own p-value against NLL's; the expert always "
        f"decodes with {REFERENCE_DECODING}.",
        f"Expert: transformer {P['expert_layers']}+{P['expert_layers']} layers, d={P['expert_dim']}, "
        f"{expert_done.get('reached')} updates on {expert_pairs} text pairs.",
        "dev NLL: teacher-forced gold NLL of the dev set (the same measure for every criterion). distinct: how many "
        "different test translations a system produced.",
        f"Run: commit {_commit()}, {_machine(args)}, {args.lanes} training runs at a time with {args.threads} thread(s) "
        f"each; {fmt_time(total_seconds)} wall in all for this invocation (stage times in timings.json)"
        + (f"; earlier invocations in this output directory (where the stages it skipped ran): {earlier}."
           if earlier else "."),
    ]
    seeds_md, seeds_json = [], None
    if args.student_seeds:
        table, seeds_json = seed_table(args, P, by_seed)
        seeds_md = ["## Student seeds", "", *table, "",
                    f"* {seeded_names(args, P)} trained again with fairseq "
                    f"--seed {', '.join(map(str, args.student_seeds))} "
                    "(the decoder's initialisation, dropout and batch order; the same corpus, ASR model and expert) "
                    "and scored like the table above: each run with the decoding of its best dev BLEU, and on test "
                    f"also with {REFERENCE_DECODING} (no decoding chosen on dev). sd: sample "
                    "standard deviation over the seeds. The table above is seed "
                    f"{args.seed}; its p-values measure the test sentences' sampling noise, this the training run's.",
                    ""]
    md = "\n".join([f"# ImitKD demo results ({args.size})", "", *lines, "", *[f"* {n}" for n in notes], "",
                    *seeds_md])
    (args.out / "results.md").write_text(md, encoding="utf-8")
    _write_json(args.out / "results.json", dict(
        size=args.size, seed=args.seed, preset={k: v for k, v in P.items()}, rows=rows, asr_wer=wer,
        p_values={f"{s}:{a}-vs-{b}": p for (s, a, b), p in pvalues.items()},
        expert=dict(bleu=ex["bleu"], chrf=ex["chrf"], best_dev_nll=ex_best, train_seconds=ex_time),
        **(dict(student_seeds=seeds_json) if seeds_json else {})))
    return md


def decoding_flags(decoding: str) -> str:
    return " ".join(beam_flags(**DECODINGS[decoding]))


def _plain_module(name: str):
    """``imitkd/<name>.py``, a module of plain Python, loaded without the package: importing ``imitkd``
    imports fairseq and torch (≈ 5 s of a core), which the demo itself never needs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_imitkd_{name}", REPO / "imitkd" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def plot(args, P, results, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    BetaSchedule = _plain_module("beta").BetaSchedule

    fig, axes = plt.subplots(1, 4, figsize=(22, 4.8))
    ax = axes[0]
    for key in P["methods"]:
        if METHODS[key].imitation:
            train, _ = curves(args.out / "students" / key / "train.log")
            pts = [(r["update"], r["beta"]) for r in train if r["beta"] is not None]
            if pts:
                ax.plot(*zip(*pts), "o", ms=3, label=f"β logged ({key})")
    # the students' schedule (the criterion's defaults: exponential, β₀ 1, base 200, T = --max-update, with
    # --beta-hold-updates); update k (1-based, the x of the logged points) runs with β = schedule(k - 1)
    T = P["student_updates"]
    schedule = BetaSchedule(decay_updates=T, hold_updates=P["beta_hold"])
    ax.plot(range(1, T + 1), [schedule(k - 1) for k in range(1, T + 1)], "-", color="gray", lw=1, label="schedule")
    ax.set(title="ImitKD: β (gold-prefix probability)", xlabel="update", ylabel="β", ylim=(-0.02, 1.02))
    ax.legend(fontsize=7)
    for key in P["methods"]:  # dev NLL and dev BLEU curves of every student
        _, dev = curves(args.out / "students" / key / "train.log")
        for ax, measure in ((axes[1], "nll"), (axes[2], "bleu")):
            pts = [(r["update"], r[measure]) for r in dev if r[measure] is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", ms=3, label=METHODS[key].name)
    ax = axes[1]
    _, expert_dev = curves(args.out / "expert" / "train.log")
    best = min((r["nll"] for r in expert_dev if r["nll"] is not None), default=None)
    if best is not None:
        ax.axhline(best, color="gray", ls="--", label="expert (text input)")
    ax.set(title="dev loss (teacher-forced gold NLL)", xlabel="update", ylabel="bits per token")
    ax.legend(fontsize=7)
    axes[2].set(title="dev BLEU during training (greedy)", xlabel="update", ylabel="BLEU")
    axes[2].legend(fontsize=7)
    ax = axes[3]
    keys = list(P["methods"])
    width = 0.8 / len(args.splits)
    for i, split in enumerate(args.splits):
        vals = [results[(k, split)]["bleu"] for k in keys]
        xs = [j + (i - (len(args.splits) - 1) / 2) * width for j in range(len(keys))]
        bars = ax.bar(xs, vals, width, label=split)
        for b, v in zip(bars, vals):
            ax.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
    ax.axhline(results[("expert", "test")]["bleu"], color="gray", ls="--", label="expert (text, ceiling)")
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(keys, rotation=20, fontsize=8)
    ax.set(title="BLEU (decoding chosen on dev, detokenized sacreBLEU)", ylabel="BLEU")
    ax.legend(fontsize=7)
    fig.suptitle(f"ImitKD demo, DDTP-ST {args.size}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main
def get_parser():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="small", choices=sorted(PRESETS), help="corpus size and model preset (default small)")
    p.add_argument("--out", type=Path, default=Path("demo"), help="output directory (default ./demo)")
    p.add_argument("--corpus", type=Path, help="use this built DDTP-ST corpus (with --spm-vocab-size) instead of <out>/corpus")
    p.add_argument("--seed", type=int, default=1, help="seed of the corpus and of every training run (default 1)")
    p.add_argument("--student-seeds", default="",
                   help="comma-separated further seeds: every student (or those of --seed-methods) is trained and "
                        "scored again with each "
                        "(same corpus, ASR model and expert); results.md adds their mean and sd (default: none)")
    p.add_argument("--methods", help=f"comma-separated students (default: the preset's; from {', '.join(METHODS)})")
    p.add_argument("--seed-methods",
                   help="comma-separated students that --student-seeds trains again (default: every student); "
                        "the main table keeps every student")
    for flag in ("expert-updates", "asr-updates", "student-updates", "expert-text-pairs", "beta-hold", "asr-extra"):
        p.add_argument(f"--{flag}", type=int, help=f"override the preset's {flag.replace('-', '_')}")
    p.add_argument("--specaugment", action="store_true", help="train the speech models with the corpus' SpecAugment")
    p.add_argument("--no-unseen", action="store_true", help=f"evaluate on test only (not test_unseen, {ENGINE_SPLIT})")
    p.add_argument("--max-len", type=int, default=200, help="longest hypothesis in tokens (default 200)")
    p.add_argument("--decodings", default=",".join(DECODINGS),
                   help="comma-separated decodings each student tries on dev; test uses its best "
                        f"(default {','.join(DECODINGS)}; {REFERENCE_DECODING} alone = one fixed decoding)")
    p.add_argument("--workers", type=int, default=2, help="processes for synthesis/preprocessing (default 2)")
    p.add_argument("--lanes", type=int, default=2, help="training/decoding runs at a time (default 2)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch/OpenMP threads per run (default 1: small models gain little from more, and on a "
                        "busy machine spinning OpenMP threads are several times slower; 0 = torch's choice)")
    p.add_argument("--force", action="store_true", help="redo the models and the evaluations")
    p.add_argument("--rebuild-corpus", action="store_true", help="re-synthesise the corpus too")
    p.add_argument("--quiet", action="store_true", help="no per-update progress lines")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    P = dict(PRESETS[args.size])
    for k in ("expert_updates", "asr_updates", "student_updates", "expert_text_pairs", "beta_hold", "asr_extra"):
        if getattr(args, k) is not None:
            P[k] = getattr(args, k)
    too_small = [f"{flag} must be >= {low}{note}, got {value}" for flag, value, low, note in (
        ("--seed", args.seed, 0, ""), ("--max-len", args.max_len, 1, ""), ("--workers", args.workers, 1, ""),
        ("--threads", args.threads, 0, " (0 = torch's choice)"), ("--beta-hold", P["beta_hold"], 0, ""),
        ("--expert-text-pairs", P["expert_text_pairs"], ALL_PAIRS, f" ({ALL_PAIRS} = the whole DDTP train pool)"),
        ("--asr-extra", P["asr_extra"], 0, "")) if value < low]
    if too_small:
        print(f"error: {too_small[0]}", file=sys.stderr)
        return 2
    if args.methods is not None:
        P["methods"] = comma_list(args.methods)
    unknown = [m for m in P["methods"] if m not in METHODS]
    if unknown or not P["methods"]:
        what = f"unknown {', '.join(unknown)}" if unknown else "no students given"
        print(f"error: --methods: {what} (choose from {', '.join(METHODS)})", file=sys.stderr)
        return 2
    for flag, items in (("--methods", P["methods"]), ("--seed-methods", comma_list(args.seed_methods or "")),
                        ("--decodings", comma_list(args.decodings))):
        twice = [x for i, x in enumerate(items) if x in items[:i]]
        if twice:
            print(f"error: {flag}: {twice[0]} given twice", file=sys.stderr)
            return 2
    if args.seed_methods is not None:
        chosen = set(comma_list(args.seed_methods))
        stray = [m for m in sorted(chosen) if m not in P["methods"]]
        if stray or not chosen or not args.student_seeds.strip():
            why = (f"{', '.join(stray)} not among the students ({', '.join(P['methods'])})" if stray
                   else "no students given" if not chosen else "it needs --student-seeds")
            print(f"error: --seed-methods: {why}", file=sys.stderr)
            return 2
        args.seed_methods = tuple(k for k in P["methods"] if k in chosen)
    args.decodings = comma_list(args.decodings)
    bad = [d for d in args.decodings if d not in DECODINGS]
    if bad or not args.decodings:
        print(f"error: --decodings: unknown {', '.join(bad) or '(none given)'} (choose from {', '.join(DECODINGS)})",
              file=sys.stderr)
        return 2
    if min(P["expert_updates"], P["asr_updates"], P["student_updates"]) < 1 or args.lanes < 1:
        print("error: --expert-updates, --asr-updates, --student-updates and --lanes must be >= 1", file=sys.stderr)
        return 2
    try:
        args.student_seeds = tuple(map(int, comma_list(args.student_seeds)))
    except ValueError:
        print(f"error: --student-seeds: comma-separated integers expected, got {args.student_seeds!r}", file=sys.stderr)
        return 2
    if args.seed in args.student_seeds or len(set(args.student_seeds)) < len(args.student_seeds):
        print(f"error: --student-seeds {','.join(map(str, args.student_seeds))}: each seed once, and not --seed "
              f"({args.seed})", file=sys.stderr)
        return 2
    if any(seed < 0 for seed in args.student_seeds):
        print(f"error: --student-seeds {','.join(map(str, args.student_seeds))}: seeds must be >= 0", file=sys.stderr)
        return 2
    args.out = args.out.resolve()
    try:
        make_output_dir(args.out)
    except DataPrepError as e:
        print(f"error: --out {e}", file=sys.stderr)
        return 2
    args.splits = evaluation_splits(args, P)
    clock = Clock()
    _commit()  # the code this invocation runs: queried now, so an edit while it trains does not enter its record
    clock.say(f"ImitKD demo: size {args.size}, output {args.out}, {args.lanes} lanes × {args.threads} thread(s)")
    previous = install_signal_handlers()
    try:
        corpus = stage_corpus(args, P, clock)
        args.corpus = corpus
        students, results, evals, wer, by_seed = run_stages(args, P, corpus, clock)
        with clock.stage("report"):
            pvalues = significance(args, P, corpus, results)
            md = write_report(args, P, corpus, results, students, evals, wer, pvalues, time.time() - clock.t0, by_seed)
            plot(args, P, results, args.out / "demo.png")
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        CHILDREN.stop(signum)
        print(f"\n{signal.Signals(signum).name}: stopped (its training runs too); run the same command again to resume",
              file=sys.stderr)
        return 128 + signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    total = time.time() - clock.t0
    # one record per invocation: a resumed demo keeps the times of the stages it skipped
    runs = timing_records(args.out)
    runs.append(dict(started=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(clock.t0)), commit=_commit(),
                     argv=sys.argv[1:] if argv is None else list(map(str, argv)), total_seconds=round(total, 1),
                     stages=clock.stages))
    _write_json(args.out / "timings.json", dict(runs=runs))
    print()
    print(md)
    print("stage times: " + ", ".join(f"{k} {fmt_time(v['seconds'])}" for k, v in clock.stages.items()))
    print(f"total wall time {fmt_time(total)}; table: {args.out / 'results.md'}, plot: {args.out / 'demo.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
