"""DDTP text: English–German sentence pairs from Debian's Translation files, deduplicated and split by package.

Entries are joined on ``Description-md5``; the short descriptions are paired, long descriptions are split
into paragraphs (`` .`` lines) and, where both sides have the same number of paragraphs and a paragraph the
same number of sentences, sentences are paired 1:1 (list/verbatim paragraphs skipped). Pairs are
deduplicated on a masked skeleton (``skeleton``), filtered (``_keep``) and split by package
(``split_of``: ``SPLIT_RULE``); ``select_text`` shuffles each split's pool with the seed and cuts it to size.
"""
import functools
import hashlib
import logging
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from ..errors import BuildError
from ..manifest import clean_text

logger = logging.getLogger("build_ddtp_st")

#: ``--size``: pairs per split and the English side's word range (``plain``: Debian word-list words only)
SIZES = {
    "ci": dict(train=200, dev=20, test=20, min_words=3, max_words=12, plain=False),
    # plain English: every word is in Debian's English word list (no package names, versions or code
    # identifiers read aloud), 3-16 words; what a small model can learn to listen to at CPU budget.
    # The pools hold ~4.6k/221/202 such pairs (train/dev/test), so the split sizes are "all of them".
    "small": dict(train=4700, dev=230, test=210, min_words=3, max_words=16, plain=True),
    "medium": dict(train=10000, dev=1000, test=1000, min_words=3, max_words=40, plain=False),
}
BASE_SPLITS = ("train", "dev", "test")
SPLIT_RULE = "sha256(Package) % 100: 0-3 test, 4-7 dev, 8-99 train"


def parse_translation(path: Path, lang: str) -> Dict[str, Tuple[str, List[str]]]:
    """md5 -> (package, description lines) of a Translation-<lang> file (first entry per md5)."""
    out, md5, pkg, buf = {}, None, None, []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("Package:"):
                pkg = line.split(":", 1)[1].strip()
            elif line.startswith("Description-md5:"):
                md5 = line.split(":", 1)[1].strip()
            elif line.startswith(f"Description-{lang}:"):
                buf = [line.split(":", 1)[1].strip()]
            elif line.startswith(" ") and buf:
                buf.append(line[1:])
            elif line == "":
                if md5 and buf and md5 not in out:
                    out[md5] = (pkg or "", buf)
                md5, pkg, buf = None, None, []
    if md5 and buf and md5 not in out:
        out[md5] = (pkg or "", buf)
    return out


Parsed = Dict[str, Tuple[str, List[str]]]  #: parse_translation's result


def _parsed(source: Union[Path, Parsed], lang: str) -> Parsed:
    """A Translation-<lang> file, parsed unless it already is (so one file is read once)."""
    return source if isinstance(source, dict) else parse_translation(source, lang)


def _paragraphs(desc: List[str]):
    ps, cur = [], []
    for line in desc[1:]:
        if line.strip() == ".":
            if cur:
                ps.append(cur)
                cur = []
        else:
            cur.append(line)
    if cur:
        ps.append(cur)
    return desc[0], ps


_SENT = re.compile(r'(?<=[.!?])\s+(?=[A-ZÄÖÜÉÈÀ0-9"«(])')
_LIST = re.compile(r"^\s*([*\-+o•]|\d+[.)])\s")


def _sentences(par: List[str]) -> Optional[List[str]]:
    if any(_LIST.match(line) or line.startswith(" ") for line in par):  # list or verbatim paragraph
        return None
    return [s.strip() for s in _SENT.split(" ".join(line.strip() for line in par)) if s.strip()]


@dataclass(frozen=True)
class Pair:
    """An English sentence and its German translation, with the Debian package they describe."""

    package: str
    en: str
    de: str


def extract_pairs(translation_en: Union[Path, Parsed], translation_de: Union[Path, Parsed]) -> List[Pair]:
    """All unique (en sentence → de sentence) pairs with their package, in file order (appendix A).
    Each argument is a Translation file or its ``parse_translation`` result."""
    en, de = _parsed(translation_en, "en"), _parsed(translation_de, "de")
    pairs: Dict[str, Pair] = {}

    def add(a: str, b: str, pkg: str):
        a, b = clean_text(a), clean_text(b)
        if a and b and a not in pairs:
            pairs[a] = Pair(pkg, a, b)

    for md5, (pkg, de_desc) in de.items():
        if md5 not in en:
            continue
        short_en, pars_en = _paragraphs(en[md5][1])
        short_de, pars_de = _paragraphs(de_desc)
        add(short_en, short_de, pkg)
        if len(pars_en) != len(pars_de):
            continue
        for pa, pb in zip(pars_en, pars_de):
            sa, sb = _sentences(pa), _sentences(pb)
            if sa and sb and len(sa) == len(sb):
                for a, b in zip(sa, sb):
                    add(a, b, pkg)
    return list(pairs.values())


_PUNCT = ".,;:!?()[]\"'«»"


def skeleton(text: str, package: str = "") -> str:
    """Template key: package name, digits, capitalised (non-initial) and identifier-like tokens masked."""
    if package:
        text = re.sub(re.escape(package), " <P> ", text, flags=re.I)
    out = []
    for i, tok in enumerate(text.split()):
        core = tok.strip(_PUNCT)
        if (
            core == "<P>"
            or any(c.isdigit() for c in core)
            or (i > 0 and core[:1].isupper())
            or re.search(r"[_./+\-:@#]", core)
            or core.lower().startswith("lib")
        ):
            out.append("<N>")
        else:
            out.append(core.lower())
    return " ".join(out)


def split_of(package: str) -> str:
    bucket = int(hashlib.sha256(package.encode("utf-8")).hexdigest(), 16) % 100
    return "test" if bucket < 4 else "dev" if bucket < 8 else "train"


#: a "plain" English word: a word of Debian's English word list (package wamerican), with an optional
#: 's, brackets/quotes and punctuation around it; no digits, no inner capitals, dots or underscores
_PLAIN_WORD = re.compile(r"^[(\"]?([A-Za-z][a-z]*)('s)?[.,;:!?)\"]?$")
WORD_LIST = "/usr/share/dict/american-english"


@functools.lru_cache(maxsize=1)
def word_list(path: str = WORD_LIST) -> frozenset:
    """Lower-cased alphabetic entries of the word list (fails with a BuildError naming the package)."""
    if not os.path.isfile(path):
        raise BuildError(f"{path} not found: the plain-English sizes need Debian's word list "
                         "(apt-get install -y wamerican)")
    with open(path, encoding="utf-8") as f:
        return frozenset(w.strip().lower() for w in f if w.strip().isalpha())


def is_plain(text: str) -> bool:
    words = word_list()
    for token in text.split():
        m = _PLAIN_WORD.match(token)
        if not m or m.group(1).lower() not in words:
            return False
    return True


_UNSPEAKABLE = re.compile(r"https?:|www\.|@|\[\[|\]\]")  #: URLs, mails, espeak phoneme brackets


def _keep_english(en: str, min_words: int, max_words: int, plain: bool = False) -> bool:
    """The English side: ``min_words..max_words`` words, speakable, plain words only if ``plain``."""
    if not (min_words <= len(en.split()) <= max_words) or _UNSPEAKABLE.search(en):
        return False
    return not plain or is_plain(en)


def _keep(p: Pair, min_words: int, max_words: int, plain: bool = False) -> bool:
    """A pair: its English side kept, translated (not a copy), a speakable German side of a sane length."""
    if p.en == p.de or _UNSPEAKABLE.search(p.de) or not _keep_english(p.en, min_words, max_words, plain):
        return False
    return 0.5 <= len(p.de) / max(1, len(p.en)) <= 2.5


def english_sentences(translation_en: Union[Path, Parsed]) -> List[Pair]:
    """Every unique English sentence of Translation-en (a file or its ``parse_translation`` result: short
    descriptions and the sentences of prose paragraphs, as ``extract_pairs`` splits them) with its
    package, in file order; ``de`` is empty."""
    out: Dict[str, Pair] = {}
    for pkg, desc in _parsed(translation_en, "en").values():
        short, pars = _paragraphs(desc)
        for sent in [short] + [x for par in pars for x in (_sentences(par) or [])]:
            sent = clean_text(sent)
            if sent and sent not in out:
                out[sent] = Pair(pkg, sent, "")
    return list(out.values())


#: the English-only split: sentences of *train* packages without a German translation in the pairs,
#: spoken like train for the ASR stage only (its manifest's tgt_text is the English transcript)
ASR_EXTRA = "train_asr_extra"  # a train* name: fairseq's S2T task treats train* manifests as training data


def select_text(
    translations: Dict[str, Path], size: str = "ci", seed: int = 1, counts: Optional[Dict[str, int]] = None
) -> Tuple[Dict[str, List[Pair]], Dict[str, int]]:
    """Filtered, deduplicated, package-split pairs; returns ({split: pairs}, {split: pool size}).

    ``counts`` overrides the split sizes; ``counts["train_asr_extra"] = N`` > 0 adds the ``ASR_EXTRA`` split: N
    English sentences of train packages whose masked skeleton occurs in no pair of any split (so no
    dev/test template leaks into it) and in no other extra sentence."""
    spec = dict(SIZES[size])
    if counts:
        spec.update(counts)
    pools: Dict[str, List[Pair]] = {s: [] for s in BASE_SPLITS}
    seen_skeletons = set()
    english = parse_translation(translations["en"], "en")  # read once: the pairs and the ASR_EXTRA split
    for p in extract_pairs(english, translations["de"]):
        if not _keep(p, spec["min_words"], spec["max_words"], spec.get("plain", False)):
            continue
        key = skeleton(p.en, p.package)
        if key in seen_skeletons:
            continue
        seen_skeletons.add(key)
        pools[split_of(p.package)].append(p)
    splits = list(BASE_SPLITS)
    if spec.get(ASR_EXTRA, 0) > 0:
        splits.append(ASR_EXTRA)
        pools[ASR_EXTRA] = []
        for p in english_sentences(english):
            if split_of(p.package) != "train" or not _keep_english(p.en, spec["min_words"], spec["max_words"],
                                                                    spec.get("plain", False)):
                continue
            key = skeleton(p.en, p.package)
            if key not in seen_skeletons:
                seen_skeletons.add(key)
                pools[ASR_EXTRA].append(p)
    chosen = {}
    for s in splits:
        pool = list(pools[s])
        random.Random(f"ddtp-st:{seed}:{s}").shuffle(pool)
        if len(pool) < spec[s]:
            logger.warning("split %s: only %d pairs available (asked for %d)", s, len(pool), spec[s])
        chosen[s] = pool[: spec[s]]
    return chosen, {s: len(v) for s, v in pools.items()}
