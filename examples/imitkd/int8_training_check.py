"""Does a cheaper expert or rollout change what ImitKD-full learns? A training check in a stable regime.

It reuses a finished demo run (``run_demo.py --size medium --out DIR``: its corpus, ASR model and expert).
The demo's ImitKD-full student is trained to update ``--fork`` with β = 1, which is exactly what the demo's
own run does while β is held (``--fork`` must not exceed the hold). From there the same run is continued to
the demo's last update once per setting, with β decaying after the hold as in the demo. fairseq restores the
model, optimizer, scheduler and data position, and ``--seed`` changes dropout and batch order from the fork
on. For each setting it reports dev NLL (bits, gold prefixes) at every validation, and dev BLEU, chrF and
distinct outputs of the last checkpoint (beam 5)::

    python examples/imitkd/int8_training_check.py --demo demo-medium --size medium \\
        --runs fp32:2,int8:1,int8+train-enc:1,int8+train-enc:2 --out int8-check

Settings: ``fp32`` and ``int8`` (``--expert-dtype`` and ``--rollout-dtype``), optionally with ``+train-enc``
(``--rollout-encoder training``). Every run goes in its own lane, one thread each. A run that has
``result.json`` is skipped, so rerunning the same command resumes the check.
"""
import argparse
import concurrent.futures
import json
import sys
from pathlib import Path

import run_demo as demo

SETTINGS = {"fp32": ["--expert-dtype", "fp32", "--rollout-dtype", "fp32"],
            "int8": ["--expert-dtype", "int8", "--rollout-dtype", "int8"]}
SUFFIXES = {"": [], "train-enc": ["--rollout-encoder", "training"]}


def setting_flags(name: str):
    base, _, suffix = name.partition("+")
    if base not in SETTINGS or suffix not in SUFFIXES:
        raise SystemExit(f"error: unknown setting {name!r} in --runs (fp32 or int8, optionally +train-enc)")
    return SETTINGS[base] + SUFFIXES[suffix]


def _set(cmd, flag, value):
    cmd[cmd.index(flag) + 1] = str(value)
    return cmd


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", type=Path, required=True, help="a finished run_demo.py --out directory")
    p.add_argument("--size", default="medium", choices=sorted(demo.PRESETS), help="its --size")
    p.add_argument("--runs", required=True, help="comma-separated SETTING:SEED, e.g. fp32:2,int8:1")
    p.add_argument("--fork", type=int, default=400, help="update at which the settings part (≤ the β hold)")
    p.add_argument("--updates", type=int, help="student updates (default: the preset's)")
    p.add_argument("--hold", type=int, help="β hold in updates (default: the preset's)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--lanes", type=int, default=2)
    opts = p.parse_args(argv)

    args = demo.get_parser().parse_args(["--size", opts.size, "--out", str(opts.demo)])
    args.out, args.corpus = opts.demo.resolve(), opts.demo.resolve() / "corpus"
    P = dict(demo.PRESETS[opts.size])
    P.update({k: v for k, v in (("student_updates", opts.updates), ("beta_hold", opts.hold)) if v is not None})
    asr, expert = args.out / "asr" / "checkpoint_best.pt", args.out / "expert" / "checkpoint_best.pt"
    for f in (asr, expert, args.corpus / "dev.tsv"):
        if not f.is_file():
            raise SystemExit(f"error: {f} not found: run run_demo.py --size {opts.size} --out {opts.demo} first")
    if not 0 < opts.fork <= P["beta_hold"]:
        raise SystemExit(f"error: --fork {opts.fork} must be within the β hold (1..{P['beta_hold']} updates; --hold)")
    runs = [r.partition(":") for r in opts.runs.split(",")]
    for name, _, seed in runs:
        setting_flags(name)
        if not seed.isdigit():
            raise SystemExit(f"error: --runs entry {name}:{seed} needs an integer seed")
    opts.out.mkdir(parents=True, exist_ok=True)
    method = demo.METHODS["imit_kd_CE"]

    def cmd(save_dir: Path):
        return demo.student_cmd(args, P, args.corpus, expert, asr, method, save_dir)

    clock = demo.Clock()

    def train(c, log: Path, label: str):  # the demo's runner: output appended to ``log``, one line on failure
        demo.run_logged(c, log, clock, label, threads=1, quiet=True)

    fork = opts.out / "fork" / "checkpoint_last.pt"
    refs = [r["tgt_text"] for r in demo.read_manifest(args.corpus / "dev.tsv")]

    def one(name: str, seed: str) -> dict:
        d = opts.out / f"{name}_s{seed}"
        if (d / "result.json").is_file():
            return json.loads((d / "result.json").read_text())
        d.mkdir(exist_ok=True)
        train(_set(cmd(d), "--seed", seed) + ["--restore-file", fork, *setting_flags(name)], d / "train.log",
              f"{name} seed {seed}")
        ckpt = d / "checkpoint_last.pt"
        gen = demo.student_generate_cmd(args, "dev", ckpt)
        key = demo._settings_key([*map(str, gen), ckpt.stat().st_mtime_ns])
        log = demo.generate(args, clock, gen, d / "dev.log", key, f"decoding {d.name} on dev")
        hyps = demo.parse_hypotheses(log.read_text(encoding="utf-8"), len(refs), log)
        _, dev = demo.curves(d / "train.log")
        rec = dict(setting=name, seed=int(seed), dev_nll={r["update"]: r["nll"] for r in dev},
                   distinct=len(set(hyps)), **demo.score(hyps, refs))
        (d / "result.json").write_text(json.dumps(rec), encoding="utf-8")
        return rec

    try:
        if not fork.is_file():  # β = 1 up to the fork: the demo's hold, without the decay it sets up
            c = _set(cmd(opts.out / "fork"), "--max-update", opts.fork)
            i = c.index("--beta-hold-updates")
            c[i:i + 2] = ["--beta-schedule", "constant"]
            print(f"training the fork ({opts.fork} updates, fp32)", flush=True)
            train(c + SETTINGS["fp32"], opts.out / "fork.log", "fork")
        with concurrent.futures.ThreadPoolExecutor(opts.lanes) as ex:
            results = list(ex.map(lambda r: one(r[0], r[2]), runs))
    except demo.DemoError as e:
        raise SystemExit(f"error: {e}")
    print("| setting | seed | dev NLL (bits) by update | dev BLEU | dev chrF | distinct |")
    print("|---|---:|---|---:|---:|---:|")
    for r in results:
        nll = " / ".join(f"{u}: {v:.3f}" for u, v in sorted((int(u), v) for u, v in r["dev_nll"].items()))
        print(f"| {r['setting']} | {r['seed']} | {nll} | {r['bleu']:.2f} | {r['chrf']:.2f} | {r['distinct']}/{len(refs)} |")
    (opts.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
