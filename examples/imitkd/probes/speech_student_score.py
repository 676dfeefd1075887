"""Score speech_student.sh's runs beside the demo's own students: per run, dev BLEU of greedy and beam 5, and (for
the probe's runs) test BLEU/chrF of the decoding with the better dev BLEU (beam 5 on a tie); a markdown table of
mean ± sd over seeds, and OUT/scores.json. The demo's students (DEMO/eval: every student decoded dev with
every decoding) give the dev columns of the comparison rows; their test rows are the demo's README table's.

    python examples/imitkd/probes/speech_student_score.py DEMO OUT
"""
import json
import statistics
import sys
from pathlib import Path

import sacrebleu

demo, out = Path(sys.argv[1]), Path(sys.argv[2])


def refs(split):
    lines = (demo / "corpus" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
    head = lines[0].split("\t")
    return [line.split("\t")[head.index("tgt_text")] for line in lines[1:] if line]


R = {s: refs(s) for s in ("dev", "test")}


def bleu_chrf(path: Path, split: str):
    hyps = path.read_text(encoding="utf-8").splitlines()
    assert len(hyps) == len(R[split]), (path, len(hyps))
    return sacrebleu.corpus_bleu(hyps, [R[split]]).score, sacrebleu.corpus_chrf(hyps, [R[split]]).score


rows = {}
for d in sorted(p for p in out.iterdir() if (p / "done.json").is_file()):  # the probe's runs
    name, seed = d.name.rsplit(".seed", 1)
    files = {(split, beam): d / f"{split}.beam{beam}.hyp" for split in ("dev", "test") for beam in (1, 5)}
    if not all(f.is_file() for f in files.values()):
        continue
    sc = {k: bleu_chrf(f, k[0]) for k, f in files.items()}
    chosen = max((5, 1), key=lambda b: sc["dev", b][0])
    rows.setdefault(name, []).append(dict(seed=int(seed), dev1=sc["dev", 1][0], dev5=sc["dev", 5][0], chosen=chosen,
                                          test=sc["test", chosen][0], chrf=sc["test", chosen][1],
                                          test5=sc["test", 5][0]))
for p in sorted((demo / "students").iterdir()):  # the demo's own students: dev only (eval/<run>[.greedy].dev.hyp)
    key, _, seed = p.name.partition(".seed")
    beam5, greedy = demo / "eval" / f"{p.name}.dev.hyp", demo / "eval" / f"{p.name}.greedy.dev.hyp"
    if beam5.is_file() and greedy.is_file():
        rows.setdefault(f"demo {key}", []).append(dict(seed=int(seed or 1), dev1=bleu_chrf(greedy, "dev")[0],
                                                      dev5=bleu_chrf(beam5, "dev")[0]))


def ms(xs):
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"


print("| run (seeds) | dev BLEU greedy | dev BLEU beam 5 | dev BLEU, better of the two | test BLEU (dev-chosen) | "
      "test chrF | test BLEU, beam 5 |")
print("|---|---:|---:|---:|---:|---:|---:|")
for name, rs in sorted(rows.items()):
    rs.sort(key=lambda r: r["seed"])
    test = [ms([r[k] for r in rs]) if "test" in rs[0] else "–" for k in ("test", "chrf", "test5")]
    print(f"| {name} ({', '.join(str(r['seed']) for r in rs)}) | {ms([r['dev1'] for r in rs])} | "
          f"{ms([r['dev5'] for r in rs])} | {ms([max(r['dev1'], r['dev5']) for r in rs])} | {' | '.join(test)} |")
(out / "scores.json").write_text(json.dumps(rows, indent=1) + "\n")
