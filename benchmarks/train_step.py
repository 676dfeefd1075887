#!/usr/bin/env python
"""Cost of one training update: label-smoothed NLL vs word-level KD vs ImitKD vs the original recipe.

Same student (``s2t_transformer_s``), same frozen expert (a randomly initialised 6+6-layer text
``transformer``), same batches for every mode; everything is built through the real code paths
(fairseq's argument parser, ``speech_to_text_kd`` task, ``task.build_criterion``, the expert loaded
from a fairseq checkpoint by the criterion) and one *update* is
``optimizer.zero_grad(); task.train_step(...); multiply_grads(1/sample_size); clip_grad_norm; step``.

Modes (``--modes``):

* ``nll``                 label_smoothed_cross_entropy (ε = 0.1), the baseline of every ratio;
* ``word_kd``             word-level KD on the gold prefix (no rollouts);
* ``imit_kd@B``, ``imit_kd_CE@B``   ImitKD-optimal / ImitKD-full with a constant β = B;
* ``reference@B``         the original (seed) ``imit_kd_CE`` step re-enacted (``ReferenceStep``).

Each mode runs in its own process (a forked child of the parent, or ``train_step.py --mode M --json``
with ``--isolation subprocess``) so that peak memory is per mode; the parent prepares the data and the
expert checkpoint once and prints a markdown table. Rollouts are capped at the gold length
(``--rollout-max-len-a 1 --rollout-max-len-b 0``: as many tokens as the gold has with its ``</s>``,
then ``</s>``): an untrained student never emits ``</s>``.
The work is split over ``bench_data`` (synthetic corpus and expert), ``bench_reference`` (the
original step), ``bench_runner`` (one mode, one process) and ``bench_report`` (table and targets);
see benchmarks/README.md for what is measured, the results and the targets.

Mode suffixes set one of our criteria's options for that mode only: ``imit_kd_CE@0/fairseq`` (a
``--rollout-decoding``), ``imit_kd_CE@0/fp32`` (``--expert-dtype`` and ``--rollout-dtype``),
``imit_kd_CE@0/train-enc`` (``--rollout-encoder training``), combined with ``+``.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the bench_* modules next to this file

import torch  # noqa: E402

from imitkd import precision  # noqa: E402
from imitkd.rollout import DECODINGS  # noqa: E402

from bench_data import SIZES, is_prepared, prepare  # noqa: E402
from bench_report import check_targets, machine_info, summarise, table  # noqa: E402
from bench_runner import _in_child, parse_mode, run_child, run_mode  # noqa: E402

DEFAULT_MODES = ["nll", "word_kd", "imit_kd@1", "imit_kd@0.5", "imit_kd@0",
                 "imit_kd_CE@1", "imit_kd_CE@0.5", "imit_kd_CE@0", "reference@1", "reference@0.5", "reference@0"]


def _quiet():
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.ERROR, force=True)
    for name in ("fairseq", "imitkd", "hydra"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (batch 8 × 240 frames, targets ≤ 20, "
                   "1 warm-up + 3 updates): under 2 minutes on 2 cores")
    p.add_argument("--modes", default=",".join(DEFAULT_MODES), help="comma-separated modes (default: all)")
    p.add_argument("--repeats", type=int, default=1, help="run every mode this many times (round robin) and pool")
    for key, (full, _) in SIZES.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=None,
                       help=f"default {full} (--quick: {SIZES[key][1]})")
    p.add_argument("--vocab", type=int, default=8000,
                   help="target (= expert) vocabulary size, specials included (e.g. 32000)")
    p.add_argument("--student-arch", default="s2t_transformer_s")
    p.add_argument("--expert-arch", default="transformer_iwslt_de_en", help="fairseq arch of the text expert")
    p.add_argument("--expert-layers", type=int, default=6, help="encoder and decoder layers of the expert")
    p.add_argument("--rollout-max-len-a", type=float, default=1.0)
    p.add_argument("--rollout-max-len-b", type=int, default=0,
                   help="rollout cap a·|gold incl. </s>| + b tokens before </s> (the criteria take b >= 0); "
                        "a=1, b=0: one token longer than the gold")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--bf16", action="store_true", help="(cuda) bf16 autocast for the training forward (student, expert, loss)")
    p.add_argument("--expert-dtype", choices=precision.CHOICES, default="auto",
                   help="--expert-dtype of our criteria (default auto: bf16 where native; the reference: fp32)")
    p.add_argument("--rollout-dtype", choices=precision.CHOICES, default="auto",
                   help="--rollout-dtype of our criteria (default auto: bf16 encoder pass where native)")
    p.add_argument("--rollout-decoding", choices=DECODINGS, default="cached",
                   help="--rollout-decoding of our criteria (default cached); a mode can override it: imit_kd_CE@0/fairseq")
    p.add_argument("--rollout-encoder", choices=["own", "training"], default="own",
                   help="--rollout-encoder of our criteria (default own); a mode can override it: imit_kd_CE@0/train-enc")
    p.add_argument("--isolation", choices=["fork", "subprocess"], default=None,
                   help="each mode in a forked child of this process (no re-import; default on CPU) or in "
                        "`python train_step.py --mode M --json` (default with --device cuda)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", default=None, help="where data and expert go (default: a temporary dir, removed)")
    p.add_argument("--json-out", default=None, help="also write all raw results here")
    p.add_argument("--mode", default=None, help="(child) run one mode in this process")
    p.add_argument("--json", action="store_true", help="(child) print the result as one JSON line")
    o = p.parse_args(argv)
    for key, (full, quick) in SIZES.items():
        if getattr(o, key) is None:
            setattr(o, key, quick if o.quick else full)
    o.isolation = o.isolation or ("subprocess" if o.device == "cuda" else "fork")

    _quiet()
    if o.mode:
        if not o.workdir or not is_prepared(o.workdir, o):
            raise SystemExit("--mode needs --workdir DIR prepared for the same sizes (a parent run with "
                             "--workdir DIR prepares it)")
        result = run_mode(o.mode, o)
        print(json.dumps(result) if o.json else result)
        return

    t_start = time.time()
    modes = [m for m in o.modes.split(",") if m]
    for m in modes:
        parse_mode(m)
    _quiet()  # (importing fairseq re-configures logging)
    tmp = o.workdir is None
    o.workdir = Path(o.workdir or tempfile.mkdtemp(prefix="imitkd-bench-"))
    try:
        if not is_prepared(o.workdir, o):
            _in_child(prepare, o.workdir, o)
        info = machine_info(o)
        info["load_before"] = os.getloadavg()
        results = []
        for rep in range(o.repeats):
            for m in modes:
                r = run_child(m, o)
                results.append(r)
                print(f"  {m:<16} {1000 * statistics.median(r['times_s']):8.0f} ms/update "
                      f"(CPU {1000 * statistics.median(r['cpu_s']):6.0f} ms)  peak {r['peak_mb']:6.0f} MB  "
                      f"(run {rep + 1}/{o.repeats}, {time.time() - t_start:.0f} s)", file=sys.stderr, flush=True)
        info["load_after"] = os.getloadavg()
        if results and results[0].get("device_name"):
            info["gpu"] = results[0]["device_name"]
        info["wall_s"] = round(time.time() - t_start, 1)
    finally:
        if tmp:
            shutil.rmtree(o.workdir, ignore_errors=True)
    rows = summarise(results, modes)
    size = (f"batch {o.batch_size} × {o.frames} frames, targets ≤ {o.max_tgt_len} tokens, vocab {o.vocab}, "
            f"student {o.student_arch}, expert {o.expert_arch} {o.expert_layers}+{o.expert_layers} layers "
            f"(--expert-dtype {o.expert_dtype}), --rollout-dtype {o.rollout_dtype}, "
            f"--rollout-decoding {o.rollout_decoding}, --rollout-encoder {o.rollout_encoder}, "
            f"rollout cap {o.rollout_max_len_a:g}·|gold|{o.rollout_max_len_b:+d}, "
            f"{o.warmup} warm-up + {o.steps} measured updates × {o.repeats} run(s)"
            + (", bf16 autocast" if o.bf16 else ""))
    print(f"# {info['date']}  {info['cpu']} ({info['cores']} cores"
          + (f", {info['gpu']}" if "gpu" in info else "") + f"), torch {info['torch']} ({info['torch_threads']} "
          f"threads), fairseq {info['fairseq']}, python {info['python']}, commit {info['commit']}")
    auto = {k: precision.describe("auto", torch.device(o.device)) for k in ("expert", "rollout")}
    print(f"# CPU native bf16 (AVX512-BF16/AMX): {'yes' if info['native_bf16'] else 'no'} "
          f"(torch CPU capability {info['cpu_capability']}); on {o.device}, --expert-dtype auto = {auto['expert']}, "
          f"--rollout-dtype auto = {auto['rollout']}")
    print(f"# {size}")
    print(f"# load average before/after: {' '.join(f'{x:.2f}' for x in info['load_before'])} / "
          f"{' '.join(f'{x:.2f}' for x in info['load_after'])}; wall time {info['wall_s']} s")
    print()
    print(table(rows, o))
    targets = check_targets(rows, "ms") + check_targets(rows, "cpu_ms")
    if targets:
        print()
        for text, ok in targets:
            print(f"- [{'x' if ok else ' '}] {text}")
    if o.json_out:
        Path(o.json_out).write_text(json.dumps({"info": info, "size": size, "results": results,
                                                "summary": rows, "targets": targets}, indent=1))


if __name__ == "__main__":
    main()
