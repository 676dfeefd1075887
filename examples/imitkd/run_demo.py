#!/usr/bin/env python3
"""One-command offline demo: NLL vs word-level KD vs ImitKD for speech translation, on a CPU.

``make demo`` (= ``python examples/imitkd/run_demo.py --size small --out demo``) runs, on 2 CPU
cores, without a GPU or any download but the Debian translation index:

1. **corpus**: the DDTP-ST en→de corpus (``examples/speech_to_text/build_ddtp_st.py``: Debian package
   descriptions, English side spoken by espeak-ng, 80-dim fbank) with a joint en+de sentencepiece
   vocabulary (``dict.txt``, shared by the expert and the student);
2. **expert**: a small text NMT expert (fairseq ``transformer``) on the corpus' English→German
   text (``text/train.spm.{en,de}``, preprocessed with ``--srcdict dict.txt --tgtdict dict.txt``).
   ``--expert-text-pairs N`` trains it on the first N pairs of the whole DDTP train pool instead (a
   superset of the student's text; dev/test packages stay held out): the usual ImitKD setting of an
   MT expert that has seen more text than there is speech, for runs with a larger budget;
3. **students**: the same small ``s2t_transformer_s`` (reduced size) trained three ways with the same
   updates and seed: ``label_smoothed_cross_entropy`` (NLL baseline, ε = 0.1), ``word_kd`` (word-level
   KD from the expert on gold prefixes) and ``imit_kd_CE`` (ImitKD: the expert's distribution on
   prefixes that are gold with probability β, else the student's own greedy rollouts; β decays
   exponentially from 1 to 1/200 over training);
4. **evaluation**: beam search (beam 5) on ``test`` (and ``test_unseen``, the same sentences spoken by
   held-out voices), detokenized sacreBLEU and chrF (sacrebleu Python API); the expert's BLEU on the
   *text* of ``test`` is the ceiling;
5. **report**: a markdown table (printed and written to ``<out>/results.md``), ``<out>/results.json``
   and ``<out>/demo.png`` (β and rollout fraction, dev-loss curves per method, BLEU bars).

Every stage is skipped when its output exists with the same settings (corpus, expert checkpoint,
each student's checkpoint, each evaluation), so an interrupted demo resumes where it stopped (an
interrupted fairseq run resumes from its ``checkpoint_last.pt``); ``--force`` redoes the expert,
students and evaluations, ``--rebuild-corpus`` also re-synthesises the corpus. Changed settings
(e.g. ``--student-updates``) redo the affected stages automatically.

Budget and what to expect (``--size small``, 2 CPU cores)
-------------------------------------------------------
Everything is sized to finish in about 15-20 minutes on 2 cores (measured: 15:00 on a machine shared
with other jobs): corpus ~1-1.5 min, expert ~3 min (2+2 layers, d=128, 700 updates), students 2-4 min
each (2+1 layers, d=128, 350 updates ≈ 6 epochs; ImitKD is the slowest: rollouts + expert),
evaluation ~1.5 min. Each run uses one thread (``--threads``): on a busy machine OpenMP threads that
spin for a core are several times slower, and these models are too small to gain much from two.
That budget is far below what a speech translation model trained from scratch needs: after 6 epochs
the students have barely begun to use the audio, so most of their translations are one or a few
generic sentences (the table's "distinct outputs" column says how many), and BLEU (around 1) and
chrF of such output are close to noise. The teacher-forced dev NLL (the curves in demo.png) is the
measure that separates the methods at this budget: in our runs word-level KD was below NLL training
throughout, and ImitKD far above both. With the default exponential schedule over so few updates, β
is below 0.5 after an eighth of the ImitKD run (update 46 of 350), so most of its updates learn from
rollouts of a student that cannot translate yet. Raise ``--student-updates`` (and
``--expert-updates``) for a run that has time to converge; the stage times scale linearly.

Layout of ``--out``::

    corpus/                 DDTP-ST (unless --corpus DIR is given)
    expert/                 data-bin/, checkpoint_best.pt, train.log, done.json
    students/<method>/      checkpoint_best.pt, train.log, done.json
    eval/<system>.<split>.json, .hyp   scores and detokenized hypotheses (one per line, in test order)
    results.md results.json demo.png timings.json (stage times of every invocation)

Needs espeak-ng (``apt-get install -y espeak-ng``) and, once, network access to deb.debian.org
(the Debian translation index). ``--size ci`` with ``--expert-updates``/``--student-updates`` is the
seconds-long smoke version the tests run. Exit status 2 with a one-line ``error:`` on a missing tool
or a failed stage (the failing command's log is named).
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILDER_DIR = REPO / "examples" / "speech_to_text"
VENV_BIN = Path(sys.executable).parent
TEST_SPLITS = ("test", "test_unseen")

#: the three students: name in the table, fairseq criterion, its flags
METHODS = (
    ("NLL (label-smoothed CE)", "label_smoothed_cross_entropy", ["--label-smoothing", "0.1"]),
    ("word-level KD", "word_kd", []),
    ("ImitKD (imit_kd_CE)", "imit_kd_CE", []),
)

#: per corpus size: vocabulary, updates and model sizes (all CPU-sized)
PRESETS = {
    "ci": dict(
        spm_vocab_size=1000, expert_text_pairs=0, expert_updates=300, student_updates=300,
        expert_layers=1, expert_dim=64, expert_ffn=128, expert_heads=2, expert_dropout=0.1, expert_max_tokens=2000,
        expert_lr=2e-3, expert_warmup=50,
        student_enc_layers=1, student_dec_layers=1, student_dim=64, student_ffn=128, student_heads=2,
        student_conv=64, student_conv_kernels="5,5", student_max_tokens=20000, student_lr=2e-3, student_warmup=50,
        log_interval=10, validate_every=50,
    ),
    # measured on 2 shared CPU cores: expert ~2.5 updates/s; students (36 utterances a batch) ~2 (NLL),
    # ~1.6 (word_kd), ~1 (imit_kd_CE: rollouts + expert) updates/s
    "small": dict(
        spm_vocab_size=1000, expert_text_pairs=0, expert_updates=700, student_updates=350,
        expert_layers=2, expert_dim=128, expert_ffn=512, expert_heads=4, expert_dropout=0.2, expert_max_tokens=2048,
        expert_lr=3e-3, expert_warmup=100,
        student_enc_layers=2, student_dec_layers=1, student_dim=128, student_ffn=512, student_heads=4,
        student_conv=128, student_conv_kernels="5,5,5", student_max_tokens=20000, student_lr=5e-3, student_warmup=100,
        log_interval=25, validate_every=50,
    ),
    # not tuned: a starting point for longer (GPU or many-core) runs
    "medium": dict(
        spm_vocab_size=4000, expert_text_pairs=0, expert_updates=8000, student_updates=8000,
        expert_layers=3, expert_dim=256, expert_ffn=1024, expert_heads=4, expert_dropout=0.3, expert_max_tokens=4096,
        expert_lr=1e-3, expert_warmup=1000,
        student_enc_layers=6, student_dec_layers=3, student_dim=256, student_ffn=1024, student_heads=4,
        student_conv=256, student_conv_kernels="5,5", student_max_tokens=30000, student_lr=2e-3, student_warmup=1000,
        log_interval=100, validate_every=500,
    ),
}
COMMON = ["--cpu", "--num-workers", "0", "--seed", "1", "--no-progress-bar", "--log-format", "json",
          "--required-batch-size-multiple", "1"]


class DemoError(Exception):
    """A missing tool or a failed stage: printed as one line, exit status 2."""


# --------------------------------------------------------------------------- console
class Clock:
    def __init__(self):
        self.t0 = time.time()
        self.stages = {}  # name -> dict(seconds, status)

    def stamp(self) -> str:
        s = int(time.time() - self.t0)
        return f"[{s // 60:02d}:{s % 60:02d}]"

    def say(self, msg: str):
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
        self.clock.say(f"   skipped: {why}")

    def __exit__(self, exc_type, exc, tb):
        dt = time.time() - self.t
        if exc_type is None:
            self.clock.stages[self.name] = dict(seconds=round(dt, 1), status=self.status)
            if self.status == "done":
                self.clock.say(f"   {self.name}: done in {dt:.0f} s")
        return False


def fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


# --------------------------------------------------------------------------- subprocesses
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
    ``--log-interval`` updates), ``train`` (epoch summary) and the validation subset (``dev``/``valid``)."""
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


def run_logged(cmd, log_path: Path, clock: Clock, label: str, threads: int, quiet: bool = False, total=None) -> float:
    """Run ``cmd``, tee its output to ``log_path`` and print one line per fairseq progress/validation
    record. Returns the wall time; raises DemoError naming the log on failure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t = time.time()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write("$ " + " ".join(map(str, cmd)) + "\n")
        log.flush()
        proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, env=_env(threads), cwd=REPO)
        tail = []
        for line in proc.stdout:
            log.write(line)
            tail = (tail + [line.rstrip()])[-30:]
            if quiet:
                continue
            for tag, s in parse_json_log([line]):
                if tag == "train_inner":
                    extra = "".join(f" {k} {s[k]}" for k in ("beta", "rollout_frac", "expert_accuracy") if k in s)
                    of = f"/{total}" if total else ""
                    clock.say(f"   [{label}] update {s.get('num_updates')}{of} epoch {s.get('epoch')} "
                              f"loss {s.get('loss')} nll {s.get('nll_loss')}{extra} ({s.get('ups')} updates/s)")
                elif tag not in ("train",):
                    p = f"{tag}_"
                    best = f" (best {s[p + 'best_loss']})" if p + "best_loss" in s else ""
                    clock.say(f"   [{label}] {tag} loss @ {s.get(p + 'num_updates')} updates: "
                              f"{s.get(p + 'loss')}, gold NLL {s.get(p + 'nll_loss')} bits{best}")
        rc = proc.wait()
    if rc != 0:
        errors = [line for line in tail if line.startswith("error:") or "Error" in line]
        why = errors[-1] if errors else (tail[-1] if tail else "no output")
        raise DemoError(f"{label} failed (exit {rc}): {why.strip()} -- full log: {log_path}")
    return time.time() - t


def _settings_key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _done(path: Path, key: str):
    """The done-record of a stage if it finished with these settings, else None."""
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except ValueError:
        return None
    return rec if rec.get("key") == key else None


def _write_json(path: Path, obj):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- stages
def load_builder():
    if str(BUILDER_DIR) not in sys.path:
        sys.path.insert(0, str(BUILDER_DIR))
    import build_ddtp_st

    return build_ddtp_st


def stage_corpus(args, P, clock) -> Path:
    with clock.stage("corpus") as st:
        if args.corpus:
            corpus = Path(args.corpus).resolve()
            for name in ("train.tsv", "test.tsv", "dev.tsv", "config.yaml", "dict.txt", "spm_joint.model"):
                if not (corpus / name).is_file():
                    raise DemoError(f"--corpus {corpus}: {name} missing (build it with build_ddtp_st.py --spm-vocab-size N)")
            st.skip(f"using --corpus {corpus}")
            return corpus
        corpus = args.out / "corpus"
        if (corpus / "MANIFEST.json").is_file() and not args.rebuild_corpus:
            manifest = json.loads((corpus / "MANIFEST.json").read_text())
            if (manifest.get("size") == args.size and manifest.get("seed") == args.seed
                    and (manifest.get("spm") or {}).get("requested_size") == P["spm_vocab_size"]):
                st.skip(f"{corpus} exists (size {args.size}); --rebuild-corpus to re-synthesise")
                return corpus
        if shutil.which("espeak-ng") is None:
            raise DemoError("espeak-ng not found: run `apt-get install -y espeak-ng` (it speaks the corpus)")
        b = load_builder()
        clock.say(f"   building DDTP-ST size={args.size} (espeak-ng + fbank, {args.workers} workers) in {corpus}")
        try:
            b.build(corpus, size=args.size, seed=args.seed, workers=args.workers, spm_vocab_size=P["spm_vocab_size"],
                    overwrite=args.rebuild_corpus, progress=not args.quiet)
        except b.ParamsMismatch as e:
            raise DemoError(f"{e} (or pass --rebuild-corpus)") from None
        except b.BuildError as e:
            raise DemoError(f"building the corpus failed: {e}") from None
        return corpus


def expert_text_stem(args, P, corpus: Path) -> Path:
    n = P["expert_text_pairs"]
    return args.out / "expert" / "text" / f"train{n}.spm" if n else corpus / "text" / "train.spm"


def expert_text(args, P, corpus: Path, clock) -> Path:
    """Train-side text of the expert: the corpus' own, or the first N pairs of the DDTP train pool."""
    n = P["expert_text_pairs"]
    stem = expert_text_stem(args, P, corpus)
    out = stem.parent
    if not n or all(Path(f"{stem}.{lang}").is_file() for lang in ("en", "de")):
        return stem
    import sentencepiece as spm

    b = load_builder()
    cache = corpus / "apt"
    try:
        translations = b.fetch_translations(cache)
    except b.BuildError as e:
        raise DemoError(f"--expert-text-pairs needs the DDTP translation files ({cache}): {e}") from None
    manifest = json.loads((corpus / "MANIFEST.json").read_text())
    text, pools = b.select_text(translations, manifest["size"], manifest["seed"], {"train": n})
    own = (corpus / "text" / "train.en").read_text(encoding="utf-8").splitlines()
    test = (corpus / "text" / "test.en").read_text(encoding="utf-8").splitlines()
    if [p.en for p in text["train"][: len(own)]] != own or [p.en for p in text["test"]] != test:
        raise DemoError("--expert-text-pairs: the DDTP pool does not extend this corpus (other Translation files "
                        "or seed?); use --expert-text-pairs 0")
    sp = spm.SentencePieceProcessor(model_file=str(corpus / "spm_joint.model"))
    out.mkdir(parents=True, exist_ok=True)
    for lang in ("en", "de"):
        lines = [" ".join(sp.encode(getattr(p, lang), out_type=str)) for p in text["train"]]
        Path(f"{stem}.{lang}.tmp").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(f"{stem}.{lang}.tmp", f"{stem}.{lang}")
    clock.say(f"   expert text: {len(text['train'])} train pairs (pool {pools['train']}; the student's "
              f"{len(own)} are the first ones), packages disjoint from dev/test")
    return stem


def expert_flags(P):
    d, f, h, L = P["expert_dim"], P["expert_ffn"], P["expert_heads"], P["expert_layers"]
    return ["--arch", "transformer", "--encoder-layers", L, "--decoder-layers", L, "--encoder-embed-dim", d,
            "--decoder-embed-dim", d, "--encoder-ffn-embed-dim", f, "--decoder-ffn-embed-dim", f,
            "--encoder-attention-heads", h, "--decoder-attention-heads", h, "--share-all-embeddings",
            "--dropout", P["expert_dropout"], "--attention-dropout", "0.1", "--weight-decay", "0.0001"]


def _interval_flags(P, updates):
    """Validate (dev loss curve) and save every ``validate_every`` updates, at least 4 times a run;
    progress lines every ``log_interval`` updates, at least 10 a run; no per-epoch checkpoints."""
    every = max(1, min(P["validate_every"], updates // 4))
    log_every = max(1, min(P["log_interval"], updates // 10))
    return ["--validate-interval", "100000", "--save-interval", "100000", "--validate-interval-updates", every,
            "--save-interval-updates", every, "--keep-interval-updates", "1", "--no-epoch-checkpoints",
            "--log-interval", log_every]


def stage_expert(args, P, corpus: Path, clock) -> Path:
    exp = args.out / "expert"
    with clock.stage("expert") as st:
        stem = expert_text_stem(args, P, corpus)
        updates = P["expert_updates"]
        train_cmd = [_exe("imitkd-train"), exp / "data-bin", *expert_flags(P), *COMMON,
                     "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", P["expert_lr"],
                     "--lr-scheduler", "inverse_sqrt", "--warmup-updates", min(P["expert_warmup"], updates // 2 or 1),
                     "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
                     "--max-tokens", P["expert_max_tokens"], "--max-update", updates,
                     *_interval_flags(P, updates), "--save-dir", exp]
        key = _settings_key([str(corpus), str(stem), [str(c) for c in train_cmd[1:]]])
        done = _done(exp / "done.json", key)
        if done and (exp / "checkpoint_best.pt").is_file() and not args.force:
            st.skip(f"{exp}/checkpoint_best.pt exists (trained in {fmt_time(done['train_seconds'])})")
            return exp / "checkpoint_best.pt"
        if _prepare_run_dir(exp, key, args.force) == "resume":
            clock.say(f"   resuming the interrupted run from {exp}/checkpoint_last.pt")
        stem = expert_text(args, P, corpus, clock)
        clock.say("   fairseq-preprocess (joint dictionary dict.txt for source and target)")
        t0 = time.time()
        run_logged([_exe("imitkd-preprocess"), "--source-lang", "en", "--target-lang", "de", "--trainpref", stem,
                    "--validpref", corpus / "text" / "dev.spm", "--testpref", corpus / "text" / "test.spm",
                    "--srcdict", corpus / "dict.txt", "--tgtdict", corpus / "dict.txt", "--destdir", exp / "data-bin",
                    "--workers", max(1, args.workers)], exp / "preprocess.log", clock, "preprocess", args.threads, True)
        if (exp / "data-bin" / "dict.de.txt").read_text(encoding="utf-8") != (corpus / "dict.txt").read_text(encoding="utf-8"):
            raise DemoError("the expert's target dictionary differs from the corpus dict.txt")
        clock.say(f"   training the expert: {P['expert_layers']}+{P['expert_layers']} layers, d={P['expert_dim']}, "
                  f"{updates} updates (log: {exp / 'train.log'})")
        run_logged(train_cmd, exp / "train.log", clock, "expert", args.threads, total=updates)
        _write_json(exp / "done.json", dict(key=key, train_seconds=round(time.time() - t0, 1), updates=updates))
        return exp / "checkpoint_best.pt"


def student_flags(P):
    d, f, h = P["student_dim"], P["student_ffn"], P["student_heads"]
    return ["--arch", "s2t_transformer_s", "--encoder-layers", P["student_enc_layers"],
            "--decoder-layers", P["student_dec_layers"], "--encoder-embed-dim", d, "--decoder-embed-dim", d,
            "--encoder-ffn-embed-dim", f, "--decoder-ffn-embed-dim", f, "--encoder-attention-heads", h,
            "--decoder-attention-heads", h, "--conv-channels", P["student_conv"],
            "--conv-kernel-sizes", P["student_conv_kernels"], "--dropout", "0.1",
            "--share-decoder-input-output-embed"]


def student_config(args, corpus: Path) -> Path:
    """The students' data config: the corpus' config.yaml, without SpecAugment unless --specaugment
    (a regulariser that only slows the first few epochs, which is all a CPU demo trains)."""
    import yaml

    cfg = yaml.safe_load((corpus / "config.yaml").read_text(encoding="utf-8"))
    if not args.specaugment:
        cfg.pop("specaugment", None)
        transforms = cfg.get("transforms") or {}
        if "_train" in transforms:
            transforms["_train"] = [t for t in transforms["_train"] if t != "specaugment"]
    path = args.out / "students" / ("config_specaugment.yaml" if args.specaugment else "config.yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def stage_student(args, P, corpus: Path, expert_ckpt: Path, method, clock) -> dict:
    name, criterion, extra = method
    sdir = args.out / "students" / criterion
    with clock.stage(f"student {criterion}") as st:
        updates = P["student_updates"]
        cmd = [_exe("imitkd-train"), corpus, "--task", "speech_to_text_kd", "--config-yaml", student_config(args, corpus),
               "--train-subset", "train", "--valid-subset", "dev", *student_flags(P), *COMMON,
               "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", P["student_lr"],
               "--lr-scheduler", "inverse_sqrt", "--warmup-updates", min(P["student_warmup"], updates // 2 or 1),
               "--clip-norm", "10.0", "--max-tokens", P["student_max_tokens"], "--max-update", updates,
               *_interval_flags(P, updates), "--save-dir", sdir, "--criterion", criterion, *extra]
        if criterion != "label_smoothed_cross_entropy":
            cmd += ["--expert", expert_ckpt, "--path", expert_ckpt.parent / "data-bin",
                    "--expert-sentencepiece-model", corpus / "spm_joint.model"]
        key = _settings_key([str(c) for c in cmd[1:]] + [_done_key(expert_ckpt.parent / "done.json")])
        done = _done(sdir / "done.json", key)
        if done and (sdir / "checkpoint_best.pt").is_file() and not args.force:
            st.skip(f"{sdir}/checkpoint_best.pt exists (trained in {fmt_time(done['train_seconds'])})")
            return done
        if _prepare_run_dir(sdir, key, args.force) == "resume":
            clock.say(f"   resuming the interrupted run from {sdir}/checkpoint_last.pt")
        clock.say(f"   {name}: s2t_transformer {P['student_enc_layers']}+{P['student_dec_layers']} layers, "
                  f"d={P['student_dim']}, {updates} updates (log: {sdir / 'train.log'})")
        seconds = run_logged(cmd, sdir / "train.log", clock, criterion, args.threads, total=updates)
        rec = dict(key=key, train_seconds=round(seconds, 1), updates=updates, criterion=criterion)
        _write_json(sdir / "done.json", rec)
        return rec


def _done_key(path: Path) -> str:
    try:
        return json.loads(path.read_text()).get("key", "")
    except (OSError, ValueError):
        return ""


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


# --------------------------------------------------------------------------- evaluation
def read_manifest(path: Path):
    return load_builder().prep.load_manifest(path)


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
    res_path, hyp_path, log = edir / f"{system}.{split}.json", edir / f"{system}.{split}.hyp", edir / f"{system}.{split}.log"
    key = _settings_key([str(c) for c in gen_cmd[1:]] + list(key_parts))
    done = _done(res_path, key)
    if done and hyp_path.is_file() and not args.force:
        clock.say(f"   {system} on {split}: cached (BLEU {done['bleu']}, chrF {done['chrf']})")
        return done
    log.unlink(missing_ok=True)
    t = time.time()
    proc = subprocess.run([str(c) for c in gen_cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=_env(args.threads), cwd=REPO)
    log.write_text("$ " + " ".join(map(str, gen_cmd)) + "\n" + proc.stdout, encoding="utf-8")
    if proc.returncode != 0:
        last = [line for line in proc.stdout.splitlines() if line.strip()][-1:] or ["no output"]
        raise DemoError(f"generation of {system} on {split} failed (exit {proc.returncode}): {last[0]} -- log: {log}")
    hyps = parse_hypotheses(proc.stdout, len(refs), log)
    hyp_path.write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    rec = dict(key=key, system=system, split=split, n=len(hyps), seconds=round(time.time() - t, 1), **score(hyps, refs))
    _write_json(res_path, rec)
    clock.say(f"   {system} on {split}: BLEU {rec['bleu']:.2f}  chrF {rec['chrf']:.2f}  "
              f"({len(hyps)} sentences, {rec['seconds']:.0f} s)")
    return rec


def gen_common(args):
    return ["--beam", "5", "--max-tokens", "50000", "--cpu", "--num-workers", "0", "--required-batch-size-multiple", "1",
            "--max-len-a", "0", "--max-len-b", str(args.max_len), "--scoring", "sacrebleu"]


def stage_eval(args, corpus: Path, expert_ckpt: Path, students, clock) -> dict:
    results = {}
    with clock.stage("evaluation"):
        refs = (corpus / "text" / "test.de").read_text(encoding="utf-8").splitlines()
        cmd = [_exe("imitkd-generate"), expert_ckpt.parent / "data-bin", "--path", expert_ckpt, "--gen-subset", "test",
               "--source-lang", "en", "--target-lang", "de", "--post-process", "sentencepiece", *gen_common(args)]
        results[("expert", "test")] = evaluate(args, clock, "expert", "test", cmd, refs,
                                               [_done_key(expert_ckpt.parent / "done.json")])
        for _name, criterion, _ in METHODS:
            sdir = args.out / "students" / criterion
            for split in args.splits:
                refs = [r["tgt_text"] for r in read_manifest(corpus / f"{split}.tsv")]
                # the data config's bpe_tokenizer (sentencepiece) detokenizes the D- lines; no --post-process
                cmd = [_exe("imitkd-generate"), corpus, "--task", "speech_to_text_kd",
                       "--config-yaml", student_config(args, corpus),
                       "--gen-subset", split, "--path", sdir / "checkpoint_best.pt", *gen_common(args)]
                results[(criterion, split)] = evaluate(args, clock, criterion, split, cmd, refs,
                                                       [students[criterion]["key"]])
    return results


# --------------------------------------------------------------------------- report
def curves(log: Path):
    """From a training log: train_inner records (update, beta, rollout_frac, loss) and dev records
    (update, gold NLL in bits)."""
    records = parse_json_log(log.read_text(encoding="utf-8").splitlines()) if log.is_file() else []
    train, dev = [], []
    for tag, s in records:
        if tag == "train_inner":
            train.append(dict(update=int(s.get("num_updates", 0)), beta=_f(s.get("beta")),
                              rollout_frac=_f(s.get("rollout_frac")), loss=_f(s.get("loss")),
                              expert_accuracy=_f(s.get("expert_accuracy"))))
        elif tag in ("dev", "valid"):
            p = f"{tag}_"
            dev.append(dict(update=int(s.get(p + "num_updates", 0)), nll=_f(s.get(p + "nll_loss", s.get(p + "loss")))))
    dedup = {}
    for r in dev:  # a resumed run may repeat an update count: keep the last
        dedup[r["update"]] = r
    return train, sorted(dedup.values(), key=lambda r: r["update"])


def _f(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def distinct_outputs(args, system: str, split: str = "test") -> int:
    """How many different hypotheses a system produced (a collapsed student repeats one sentence)."""
    return len(set((args.out / "eval" / f"{system}.{split}.hyp").read_text(encoding="utf-8").splitlines()))


def write_report(args, P, corpus, results, students, clock):
    n_train = len(read_manifest(corpus / "train.tsv"))
    n_test = len(read_manifest(corpus / "test.tsv"))
    header = ("| method | " + " | ".join(f"BLEU {s} | chrF {s}" for s in args.splits)
              + " | distinct outputs (test) | best dev NLL (bits) | train time |")
    lines = [header, "|" + "---|" * (1 + 2 * len(args.splits) + 3)]
    rows = []
    for name, criterion, _ in METHODS:
        _, dev = curves(args.out / "students" / criterion / "train.log")
        best = min((r["nll"] for r in dev if r["nll"] is not None), default=None)
        cells = [f"{results[(criterion, split)][k]:.2f}" for split in args.splits for k in ("bleu", "chrf")]
        distinct = distinct_outputs(args, criterion)
        t = students[criterion]["train_seconds"]
        cells += [f"{distinct}/{n_test}", f"{best:.3f}" if best is not None else "-", fmt_time(t)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        rows.append(dict(method=name, criterion=criterion, train_seconds=t, best_dev_nll=best, distinct_test=distinct,
                         **{f"{k}_{split}": results[(criterion, split)][k] for split in args.splits for k in ("bleu", "chrf")}))
    ex = results[("expert", "test")]
    ex_time = json.loads((args.out / "expert" / "done.json").read_text()).get("train_seconds", 0)
    _, expert_dev = curves(args.out / "expert" / "train.log")
    ex_best = min((r["nll"] for r in expert_dev if r["nll"] is not None), default=None)
    cells = [f"{ex['bleu']:.2f}", f"{ex['chrf']:.2f}"] + ["–", "–"] * (len(args.splits) - 1)
    cells += [f"{distinct_outputs(args, 'expert')}/{n_test}", f"{ex_best:.3f}" if ex_best is not None else "-",
              fmt_time(ex_time)]
    lines.append("| expert NMT, reads the English *text* (ceiling) | " + " | ".join(cells) + " |")
    expert_pairs = P["expert_text_pairs"] or n_train
    notes = [
        f"DDTP-ST en→de, size {args.size}: {n_train} training utterances, {n_test} test utterances "
        f"(test_unseen: the same sentences, held-out voices); joint sentencepiece vocabulary of {P['spm_vocab_size']}.",
        f"Students: s2t_transformer {P['student_enc_layers']}+{P['student_dec_layers']} layers, d={P['student_dim']}, "
        f"{P['student_updates']} updates each (batches of ≤{P['student_max_tokens']} frames), seed {args.seed}, the "
        "checkpoint with the best dev NLL; beam 5; detokenized sacreBLEU and chrF (sacrebleu API).",
        f"Expert: transformer {P['expert_layers']}+{P['expert_layers']} layers, d={P['expert_dim']}, "
        f"{P['expert_updates']} updates on {expert_pairs} text pairs.",
        "dev NLL: teacher-forced gold NLL of the dev set (the same measure for every criterion). distinct outputs: "
        "how many different test translations a system produced; a student that has not learned to listen yet "
        "repeats one or a few sentences, and its BLEU then says little.",
        f"train time: wall clock of the training run with {args.threads or 'default'} thread(s), on this machine.",
    ]
    md = "\n".join(["# ImitKD demo results", "", *lines, "", *[f"* {n}" for n in notes], ""])
    (args.out / "results.md").write_text(md, encoding="utf-8")
    _write_json(args.out / "results.json", dict(size=args.size, seed=args.seed, preset=P, rows=rows,
                                                expert=dict(bleu=ex["bleu"], chrf=ex["chrf"], best_dev_nll=ex_best,
                                                            train_seconds=ex_time)))
    return md


def plot(args, P, results, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    train, _ = curves(args.out / "students" / "imit_kd_CE" / "train.log")
    ax = axes[0]
    pts = [(r["update"], r["beta"]) for r in train if r["beta"] is not None]
    if pts:
        ax.plot(*zip(*pts), "o-", label="β (gold-prefix prob.)", color="tab:green")
    pts = [(r["update"], r["rollout_frac"]) for r in train if r["rollout_frac"] is not None]
    if pts:
        ax.plot(*zip(*pts), "s", label="rollout fraction (sampled)", color="tab:orange", alpha=0.7)
    if P["student_updates"] > 1:  # the schedule itself: update k (1-based) uses β = 200^(-(k-1)/T)
        T = P["student_updates"]
        ks = list(range(1, T + 1, max(1, T // 200)))
        ax.plot(ks, [200.0 ** (-(k - 1) / T) for k in ks], "-", color="gray", lw=1, label="schedule 200^(−(k−1)/T)")
    ax.set(title="ImitKD: β schedule (logged)", xlabel="update", ylabel="probability", ylim=(-0.02, 1.02))
    ax.legend()
    ax = axes[1]
    for name, criterion, _ in METHODS:
        _, dev = curves(args.out / "students" / criterion / "train.log")
        pts = [(r["update"], r["nll"]) for r in dev if r["nll"] is not None]
        if pts:
            ax.plot(*zip(*pts), "o-", label=name)
    _, expert_dev = curves(args.out / "expert" / "train.log")
    best = min((r["nll"] for r in expert_dev if r["nll"] is not None), default=None)
    if best is not None:
        ax.axhline(best, color="gray", ls="--", label="expert (text input)")
    ax.set(title="dev loss (teacher-forced gold NLL)", xlabel="update", ylabel="bits per token")
    ax.legend()
    ax = axes[2]
    names = [n for n, _, _ in METHODS]
    width = 0.8 / len(args.splits)
    for i, split in enumerate(args.splits):
        vals = [results[(c, split)]["bleu"] for _, c, _ in METHODS]
        xs = [j + (i - (len(args.splits) - 1) / 2) * width for j in range(len(names))]
        bars = ax.bar(xs, vals, width, label=split)
        for b, v in zip(bars, vals):
            ax.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    ax.axhline(results[("expert", "test")]["bleu"], color="gray", ls="--", label="expert (text, ceiling)")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n.split(" (")[0] for n in names])
    ax.set(title="BLEU (beam 5, detokenized sacreBLEU)", ylabel="BLEU")
    ax.legend(fontsize=8)
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
    p.add_argument("--seed", type=int, default=1, help="seed of corpus and training (default 1)")
    p.add_argument("--expert-updates", type=int, help="expert training updates (default: the preset's)")
    p.add_argument("--student-updates", type=int, help="updates of each student (default: the preset's)")
    p.add_argument("--expert-text-pairs", type=int,
                   help="train the expert on the first N pairs of the DDTP train pool (0: the corpus' own train text)")
    p.add_argument("--spm-vocab-size", type=int, help="joint sentencepiece vocabulary (default: the preset's)")
    p.add_argument("--specaugment", action="store_true", help="train the students with the corpus' SpecAugment")
    p.add_argument("--no-unseen", action="store_true", help="evaluate on test only (not test_unseen)")
    p.add_argument("--max-len", type=int, default=200, help="longest hypothesis in tokens (default 200)")
    p.add_argument("--workers", type=int, default=2, help="processes for synthesis/preprocessing (default 2)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch/OpenMP threads per run (default 1: small models gain little from more, and on a "
                        "busy machine spinning OpenMP threads are several times slower; 0 = torch's choice)")
    p.add_argument("--force", action="store_true", help="redo the expert, the students and the evaluations")
    p.add_argument("--rebuild-corpus", action="store_true", help="re-synthesise the corpus too")
    p.add_argument("--quiet", action="store_true", help="no per-update progress lines")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    P = dict(PRESETS[args.size])
    for k in ("expert_updates", "student_updates", "expert_text_pairs", "spm_vocab_size"):
        if getattr(args, k) is not None:
            P[k] = getattr(args, k)
    if P["expert_updates"] < 1 or P["student_updates"] < 1:
        print("error: --expert-updates and --student-updates must be >= 1", file=sys.stderr)
        return 2
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.splits = ("test",) if args.no_unseen else TEST_SPLITS
    if args.corpus and not args.no_unseen and not (Path(args.corpus) / "test_unseen.tsv").is_file():
        args.splits = ("test",)
    clock = Clock()
    clock.say(f"ImitKD demo: size {args.size}, output {args.out}")
    try:
        corpus = stage_corpus(args, P, clock)
        expert_ckpt = stage_expert(args, P, corpus, clock)
        students = {}
        for method in METHODS:
            students[method[1]] = stage_student(args, P, corpus, expert_ckpt, method, clock)
        results = stage_eval(args, corpus, expert_ckpt, students, clock)
        with clock.stage("report"):
            md = write_report(args, P, corpus, results, students, clock)
            plot(args, P, results, args.out / "demo.png")
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130
    total = time.time() - clock.t0
    runs = []
    try:  # one record per invocation: a resumed demo keeps the times of the stages it skipped
        runs = json.loads((args.out / "timings.json").read_text()).get("runs", [])
    except (OSError, ValueError, AttributeError):
        pass
    runs.append(dict(started=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(clock.t0)), argv=sys.argv[1:] if argv is None
                     else list(map(str, argv)), total_seconds=round(total, 1), stages=clock.stages))
    _write_json(args.out / "timings.json", dict(runs=runs))
    print()
    print(md)
    print("stage times: " + ", ".join(f"{k} {fmt_time(v['seconds'])}" for k, v in clock.stages.items()))
    print(f"total wall time {fmt_time(total)}; table: {args.out / 'results.md'}, plot: {args.out / 'demo.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
