"""What the probes' scorers (text_student_score.py, speech_student_score.py) share: a probe run is
OUT/<name>.seed<N>/ with done.json and ``{dev,test}.beam{1,5}.hyp`` (one detokenized hypothesis per line, in
the manifest's order); it is scored with the decoding of the better dev BLEU (beam 5 on a tie, as the demo's
--decodings order)."""
import statistics
from pathlib import Path

import sacrebleu

from imitkd_data.manifest import read_manifest


def references(corpus: Path, splits=("dev", "test")) -> dict:
    """{split: the tgt_text of each row of CORPUS/<split>.tsv}."""
    return {s: [r["tgt_text"] for r in read_manifest(Path(corpus) / f"{s}.tsv")] for s in splits}


def score(path: Path, refs) -> tuple:
    """(BLEU, chrF, distinct hypotheses) of the hypotheses in ``path`` against ``refs``."""
    hyps = path.read_text(encoding="utf-8").splitlines()
    assert len(hyps) == len(refs), (path, len(hyps))
    return sacrebleu.corpus_bleu(hyps, [refs]).score, sacrebleu.corpus_chrf(hyps, [refs]).score, len(set(hyps))


def probe_runs(out: Path, refs: dict) -> dict:
    """{name: [{seed, dev1, dev5, chosen, test, chrf, test5, distinct}]} of the finished, fully decoded runs
    in ``out`` (dev1/dev5: dev BLEU greedy/beam 5; chosen: the beam of the better dev BLEU; test, chrf,
    distinct: test under it; test5: test BLEU with beam 5)."""
    rows = {}
    for d in sorted(p for p in Path(out).iterdir() if (p / "done.json").is_file()):
        name, seed = d.name.rsplit(".seed", 1)
        files = {(split, beam): d / f"{split}.beam{beam}.hyp" for split in ("dev", "test") for beam in (1, 5)}
        if not all(f.is_file() for f in files.values()):
            continue
        sc = {k: score(f, refs[k[0]]) for k, f in files.items()}
        chosen = max((5, 1), key=lambda b: sc["dev", b][0])
        rows.setdefault(name, []).append(dict(seed=int(seed), dev1=sc["dev", 1][0], dev5=sc["dev", 5][0],
                                              chosen=chosen, test=sc["test", chosen][0], chrf=sc["test", chosen][1],
                                              test5=sc["test", 5][0], distinct=sc["test", chosen][2]))
    return rows


def mean_sd(xs) -> str:
    """"mean ± sd" (sample sd) with two decimals; one value as it is."""
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"
