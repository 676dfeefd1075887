"""Score text_student.sh's runs: per run, the dev BLEU of greedy and beam 5, the test BLEU/chrF of the decoding with
the better dev BLEU (beam 5 on a tie), beam 5 on test; a markdown table of mean ± sd per method over seeds, and
OUT/scores.json.

    python examples/imitkd/probes/text_student_score.py CORPUS OUT
"""
import json
import sys
from pathlib import Path

from probe_scores import mean_sd as ms
from probe_scores import probe_runs, references

corpus, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = probe_runs(out, references(corpus))
print("| method | seeds | dev BLEU greedy | dev BLEU beam5 | test BLEU (dev-chosen) | test chrF | test BLEU beam5 | per seed (test, dev-chosen) |")
print("|---|---|---|---|---|---|---|---|")
for m in ("nll", "word_kd", "imit_kd_CE"):
    r = sorted(rows.get(m, []), key=lambda x: x["seed"])
    if not r:
        continue
    print(f"| {m} | {len(r)} | {ms([x['dev1'] for x in r])} | {ms([x['dev5'] for x in r])} | {ms([x['test'] for x in r])} | "
          f"{ms([x['chrf'] for x in r])} | {ms([x['test5'] for x in r])} | "
          + " / ".join(f"{x['test']:.2f} ({'greedy' if x['chosen'] == 1 else 'beam5'}, {x['distinct']} distinct)" for x in r) + " |")
json.dump(rows, open(out / "scores.json", "w"), indent=1)
