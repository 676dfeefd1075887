"""Score text_student.sh's runs: per run, the dev BLEU of greedy and beam 5, the test BLEU/chrF of the decoding with
the better dev BLEU (beam 5 on a tie), beam 5 on test; a markdown table of mean ± sd per method over seeds, and
OUT/scores.json.

    python examples/imitkd/probes/text_student_score.py CORPUS OUT
"""
import json
import statistics
import sys
from pathlib import Path

import sacrebleu

corpus, out = Path(sys.argv[1]), Path(sys.argv[2])
def refs(split):
    lines = (corpus / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
    head = lines[0].split("\t")
    return [l.split("\t")[head.index("tgt_text")] for l in lines[1:] if l]
R = {s: refs(s) for s in ("dev", "test")}
rows = {}
for d in sorted(p for p in out.iterdir() if (p / "done.json").is_file()):
    method, seed = d.name.rsplit(".seed", 1)
    sc = {}
    for split in ("dev", "test"):
        for beam in (1, 5):
            f = d / f"{split}.beam{beam}.hyp"
            if not f.is_file():
                break
            hyps = f.read_text(encoding="utf-8").splitlines()
            assert len(hyps) == len(R[split]), (f, len(hyps))
            sc[split, beam] = (sacrebleu.corpus_bleu(hyps, [R[split]]).score, sacrebleu.corpus_chrf(hyps, [R[split]]).score,
                               len(set(hyps)))
    if len(sc) < 4:
        continue
    chosen = max((5, 1), key=lambda b: sc["dev", b][0])  # beam 5 first on a tie, as the demo's --decodings order
    rows.setdefault(method, []).append(dict(seed=int(seed), dev1=sc["dev", 1][0], dev5=sc["dev", 5][0], chosen=chosen,
                                            test=sc["test", chosen][0], chrf=sc["test", chosen][1],
                                            test5=sc["test", 5][0], distinct=sc["test", chosen][2]))
def ms(xs):
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"
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
