"""Who decides where a student's translation ends? Stopping points of the students and the expert on dev.

It reads a finished demo run (``run_demo.py --out DIR``: its corpus, expert and students). For every
student, each dev sentence is rolled out greedily as in training (``imitkd.rollout``; capped at
``a · gold_len + b`` tokens, the criterion's defaults), and the frozen expert reads the English transcript
and the student's rollout as its prefix. Printed per student, as fractions of the total gold length in
target tokens (``</s>`` not counted), and written to ``--json``:

* ``rollout``: length of the student's greedy rollouts;
* ``expert_on_rollout``: where the expert's argmax first says ``</s>`` along those rollouts (the end
  ImitKD teaches; the rollout's length where it never does). The expert reads the split's gold
  transcript (``src_text``), also for students that trained with it reading ASR transcripts;
* ``expert_on_gold`` / ``student_on_gold``: the same for the expert and the student on gold prefixes;
* ``expert_p_eos_rollout`` / ``expert_p_eos_gold``: the expert's mean P(``</s>``) over the first half of
  each sentence (rollout and gold prefixes).

    python examples/imitkd/length_diagnostics.py --demo demo-medium [--students nll,imit_kd_CE] [--corpus DIR]
"""
import argparse
import json
import sys
from pathlib import Path

import torch

from imitkd_data import atomic

FIELDS = ("rollout", "expert_on_rollout", "expert_on_gold", "student_on_gold", "expert_p_eos_rollout",
          "expert_p_eos_gold")


def first_eos(scores: torch.Tensor, prev: torch.Tensor, eos: int, pad: int) -> torch.Tensor:
    """B prefix lengths (tokens after the leading ``</s>``) at which the argmax of ``scores`` (B×T×V) is first
    ``</s>`` along ``prev`` (B×T decoder inputs); the prefix's own length where it never is."""
    says_eos = scores.argmax(-1).eq(eos) & prev.ne(pad)
    never = prev.ne(pad).sum(1).float() - 1  # position i predicts the token after i prefix tokens
    return torch.where(says_eos.any(1), says_eos.float().argmax(1), never)


def mean_first_half(p: torch.Tensor, gold_len: torch.Tensor) -> torch.Tensor:
    """B means of ``p`` (B×T, per position) over positions 0 … ⌈gold_len/2⌉ − 1 (gold_len without ``</s>``)."""
    half = (gold_len + 1).div(2, rounding_mode="floor").clamp(min=1)
    keep = torch.arange(p.size(1), device=p.device)[None, :] < half[:, None]
    return (p * keep).sum(1) / keep.sum(1)


def json_problem(path: Path):
    """Why ``--json path`` may not be written (None if it may): its directory must exist, and an existing file is
    replaced only if it is an earlier output of this script (never, say, the demo's config.yaml)."""
    if path.is_dir():
        return "is a directory"
    if not path.parent.is_dir():
        return f"directory {path.parent} does not exist"
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # not UTF-8 or not JSON
            old = None
        if not (isinstance(old, dict) and old and all(isinstance(v, dict) and set(FIELDS) <= set(v)
                                                      for v in old.values())):
            return "exists and is not an output of length_diagnostics.py; not overwriting it (remove it first)"
    return None


def measure(criterion, model, batches, cap_a: float, cap_b: int) -> dict:
    from imitkd.data import EXPERT_INPUT
    from imitkd.rollout import length_caps, mix_prefixes, student_rollout

    eos, pad = criterion.eos, criterion.pad
    sums = dict.fromkeys(FIELDS, 0.0)
    gold_total, n = 0.0, 0
    with torch.no_grad():
        for sample in batches:
            net_input, target_lengths = sample["net_input"], sample["target_lengths"]
            gold_len = (target_lengths - 1).float()
            rows = torch.arange(target_lengths.numel())
            rollouts = student_rollout(model, net_input["src_tokens"], net_input["src_lengths"],
                                       length_caps(target_lengths, cap_a, cap_b), eos, pad)
            rollout_prev = mix_prefixes(net_input["prev_output_tokens"], rollouts, rows, eos, pad)
            gold_prev = net_input["prev_output_tokens"]
            source = sample[EXPERT_INPUT]["src_tokens"], sample[EXPERT_INPUT]["src_lengths"]
            on_rollout = criterion.expert.scores(*source, rollout_prev).float()
            on_gold = criterion.expert.scores(*source, gold_prev).float()
            student_gold = model(**net_input)[0]
            sums["rollout"] += float(rollouts.ne(pad).sum() - rollouts.size(0))
            sums["expert_on_rollout"] += float(first_eos(on_rollout, rollout_prev, eos, pad).sum())
            sums["expert_on_gold"] += float(first_eos(on_gold, gold_prev, eos, pad).sum())
            sums["student_on_gold"] += float(first_eos(student_gold, gold_prev, eos, pad).sum())
            for key, scores in (("expert_p_eos_rollout", on_rollout), ("expert_p_eos_gold", on_gold)):
                sums[key] += float(mean_first_half(scores.softmax(-1)[..., eos], gold_len).sum())
            gold_total += float(gold_len.sum())
            n += target_lengths.numel()
    out = {k: sums[k] / gold_total for k in FIELDS[:4]}
    out.update({k: sums[k] / n for k in FIELDS[4:]})
    return dict(out, sentences=n)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", type=Path, required=True, help="a finished run_demo.py --out directory")
    p.add_argument("--corpus", type=Path, help="the corpus it was given with run_demo.py --corpus (default <demo>/corpus)")
    p.add_argument("--students", help="comma-separated student keys (default: every one with a checkpoint)")
    p.add_argument("--split", default="dev", help="manifest split (default dev)")
    p.add_argument("--rollout-max-len-a", type=float, default=1.5, help="rollout cap a·gold_len + b (default 1.5)")
    p.add_argument("--rollout-max-len-b", type=int, default=5, help="(default 5)")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args(argv)
    students_dir, corpus = args.demo / "students", args.corpus or args.demo / "corpus"
    if not students_dir.is_dir() or not (args.demo / "config.yaml").is_file():
        print(f"error: --demo {args.demo}: not a finished run_demo.py output (no students/ or config.yaml)",
              file=sys.stderr)
        return 2
    have = sorted(d.name for d in students_dir.iterdir() if (d / "checkpoint_best.pt").is_file())
    keys = [k.strip() for k in args.students.split(",") if k.strip()] if args.students else have
    missing = [k for k in keys if k not in have]
    if missing or not keys:
        print(f"error: --students: no checkpoint_best.pt for {', '.join(missing) or '(none)'} in {students_dir} "
              f"(have: {', '.join(have) or 'none'})", file=sys.stderr)
        return 2
    if not (corpus / f"{args.split}.tsv").is_file():
        print(f"error: --split {args.split}: {corpus / (args.split + '.tsv')} not found", file=sys.stderr)
        return 2
    problem = args.json and json_problem(args.json)
    if problem:
        print(f"error: --json {args.json}: {problem}", file=sys.stderr)
        return 2
    import imitkd  # noqa: F401  (registers the task and criteria)
    from fairseq import checkpoint_utils, tasks
    from imitkd.rollout import length_cap_problem

    problem = length_cap_problem(args.rollout_max_len_a, args.rollout_max_len_b)
    if problem:  # the criterion's own rule
        print(f"error: {problem}", file=sys.stderr)
        return 2

    torch.manual_seed(0)
    # absolute paths: fairseq resolves a relative config_yaml against the data directory
    overrides = {"data": str(corpus.absolute()), "config_yaml": str((args.demo / "config.yaml").absolute())}
    # any distilled student's checkpoint names the expert and how to feed it (the task, the source column)
    state = next((st for st in (checkpoint_utils.load_checkpoint_to_cpu(str(students_dir / k / "checkpoint_best.pt"),
                                                                        overrides) for k in have)
                  if getattr(st["cfg"].criterion, "expert", None)), None)
    if state is None:
        print(f"error: --demo {args.demo}: no distilled student (its checkpoint names the expert)", file=sys.stderr)
        return 2
    task = tasks.setup_task(state["cfg"].task)
    criterion = task.build_criterion(state["cfg"].criterion)
    task.load_dataset(args.split)
    batches = list(task.get_batch_iterator(task.dataset(args.split), max_tokens=20000,
                                           required_batch_size_multiple=1).next_epoch_itr(shuffle=False))
    results = {}
    print("student\t" + "\t".join(FIELDS))
    for key in keys:
        state = checkpoint_utils.load_checkpoint_to_cpu(str(students_dir / key / "checkpoint_best.pt"), overrides)
        model = task.build_model(state["cfg"].model, from_checkpoint=True)
        model.load_state_dict(state["model"])
        model.eval()
        results[key] = measure(criterion, model, batches, args.rollout_max_len_a, args.rollout_max_len_b)
        print(key + "\t" + "\t".join(f"{results[key][f]:.3f}" if f in FIELDS[:4] else f"{results[key][f]:.4f}"
                                      for f in FIELDS), flush=True)
    if args.json:
        try:
            atomic.write_text(args.json, json.dumps(results, indent=1) + "\n")
        except OSError as e:
            print(f"error: --json {args.json}: cannot write: {e.strerror or e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
