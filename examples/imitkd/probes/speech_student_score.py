"""Score speech_student.sh's runs beside the demo's own students: per run, dev BLEU of greedy and beam 5, and (for
the probe's runs) test BLEU/chrF of the decoding with the better dev BLEU (beam 5 on a tie); a markdown table of
mean ± sd over seeds, and OUT/scores.json. The demo's students (DEMO/eval: every student decoded dev with
every decoding) give the dev columns of the comparison rows; their test rows are the demo's README table's.

    python examples/imitkd/probes/speech_student_score.py DEMO OUT
"""
import json
import sys
from pathlib import Path

from probe_scores import mean_sd as ms
from probe_scores import probe_runs, references, score

demo, out = Path(sys.argv[1]), Path(sys.argv[2])
R = references(demo / "corpus")
rows = probe_runs(out, R)
for p in sorted((demo / "students").iterdir()):  # the demo's own students: dev only (eval/<run>[.greedy].dev.hyp)
    key, _, seed = p.name.partition(".seed")
    beam5, greedy = demo / "eval" / f"{p.name}.dev.hyp", demo / "eval" / f"{p.name}.greedy.dev.hyp"
    if beam5.is_file() and greedy.is_file():
        rows.setdefault(f"demo {key}", []).append(dict(seed=int(seed or 1), dev1=score(greedy, R["dev"])[0],
                                                      dev5=score(beam5, R["dev"])[0]))
print("| run (seeds) | dev BLEU greedy | dev BLEU beam 5 | dev BLEU, better of the two | test BLEU (dev-chosen) | "
      "test chrF | test BLEU, beam 5 |")
print("|---|---:|---:|---:|---:|---:|---:|")
for name, rs in sorted(rows.items()):
    rs.sort(key=lambda r: r["seed"])
    test = [ms([r[k] for r in rs]) if "test" in rs[0] else "–" for k in ("test", "chrf", "test5")]
    print(f"| {name} ({', '.join(str(r['seed']) for r in rs)}) | {ms([r['dev1'] for r in rs])} | "
          f"{ms([r['dev5'] for r in rs])} | {ms([max(r['dev1'], r['dev5']) for r in rs])} | {' | '.join(test)} |")
(out / "scores.json").write_text(json.dumps(rows, indent=1) + "\n")
