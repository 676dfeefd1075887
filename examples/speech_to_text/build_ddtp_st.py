#!/usr/bin/env python3
"""Build "DDTP-ST en→de": an offline English-speech → German-text corpus from package registries only.

What it does
------------
1. **Text.** English–German sentence pairs from Debian's translated package descriptions (DDTP):
   ``apt-get update -o Acquire::Languages=en,de`` into a *private* list directory (the system's apt
   state is untouched) from the first Debian ``main`` 'deb' source of the system's own apt
   configuration (``/etc/apt/sources.list``, ``sources.list.d/*.list`` and deb822 ``*.sources``: its
   URI, suite and Signed-By; printed, and recorded in MANIFEST.json), then ``apt-helper cat-file`` decompresses
   ``Translation-en`` / ``Translation-de``. Entries are joined on ``Description-md5``; the short
   descriptions are paired, long descriptions are split into paragraphs (`` .`` lines) and, where both
   sides have the same number of paragraphs and a paragraph the same number of sentences, sentences
   are paired 1:1 (list/verbatim paragraphs skipped). The ``Package:`` field is kept.
   Pairs are deduplicated on a masked skeleton (package name, digits, capitalised words and
   identifier-like tokens masked), so templates such as "This package contains the X library." appear
   once; untranslated pairs, URLs and odd length ratios are dropped, and the English side must have
   ``min_words..max_words`` words (3–40; 3–12 for ``ci``).
   **Split by package**: ``sha256(Package) % 100`` → 0–3 test, 4–7 dev, 8–99 train, so no package
   (and no template) occurs in two splits. Each split's pool is shuffled with ``--seed`` and cut to size.
2. **Speech.** ``espeak-ng`` (Debian main; ``apt-get install -y espeak-ng``) reads the English side:
   random voice, rate (``-s`` 140–200) and pitch (``-p`` 35–65); resampled 22050 → 16000 Hz
   (``scipy.signal.resample_poly(320, 441)``), peak gain 0.3–0.9, white noise at 15–40 dB SNR (so no
   frame sits at the log-mel floor of digital silence), quantised to 16 bit.
   Voices: ``SEEN_VOICES`` (8) for train/dev/test; ``UNSEEN_VOICES`` (2, accents and variants not used
   in training) only for the extra splits ``dev_unseen`` / ``test_unseen``, which hold the *same
   sentences* as dev/test spoken by a held-out voice (compare dev vs dev_unseen for speaker robustness).
   All random choices derive from (seed, utterance id): the build is deterministic given ``--seed``
   (and the Translation files and espeak-ng version, which MANIFEST.json records).
3. **Features.** 80-dim Kaldi fbank through ``prep_s2t_data`` (same code as for MuST-C/CoVoST):
   per-utterance .npy files packed into an uncompressed ``fbank80.zip``. Extraction is resumable:
   re-running skips every utterance whose features exist (``fbank80/*.npy`` or inside the zip).

Sizes (``--size``; pairs train/dev/test; dev_unseen/test_unseen add the dev/test counts again):
``ci`` 200/20/20 (3–12 words; ~15 s incl. apt update), ``small`` 2000/200/200, ``medium`` 10000/1000/1000.

Output layout (``--out-dir``)::

    fbank80.zip                         features, <id>.npy members (ZIP_STORED)
    train.tsv dev.tsv test.tsv          fairseq S2T manifests: id audio n_frames tgt_text speaker src_text
    dev_unseen.tsv test_unseen.tsv      same sentences as dev/test, held-out voices (speaker = voice)
    text/{train,dev,test}.{en,de}       raw parallel text (one sentence per line) for the text NMT expert
    text/{train,dev,test}.pairs.tsv     id package src_text tgt_text (ids match the manifests)
    MANIFEST.json                       sha256 of Translation-en/de and of every output, sizes, seed,
                                        voices, espeak-ng version, build time, parameters
    with --spm-vocab-size N:
    spm_joint.model spm_joint.vocab     joint en+de sentencepiece model trained on text/train.{en,de}
    dict.txt                            its fairseq dictionary (shared by expert src/tgt and the student)
    text/{train,dev,test}.spm.{en,de}   sentencepiece-encoded text
    config.yaml                         S2T data config (vocab_filename dict.txt, absolute spm path,
                                        audio_root, utterance CMVN + SpecAugment 'lb' on train)
    apt/                                private apt lists + decompressed Translation-en/de (cache) and
                                        apt_source.json (the apt source they came from)
    with --save-audio:  flac/<id>.flac  the 16 kHz audio the features were computed from

Train the expert with e.g. ``fairseq-preprocess --source-lang en --target-lang de --trainpref
text/train.spm --validpref text/dev.spm --testpref text/test.spm --srcdict dict.txt --tgtdict dict.txt``
and the student with ``fairseq-train <out> --config-yaml config.yaml --train-subset train
--valid-subset dev --task speech_to_text ...``.

Python API: ``build(out_dir, size="ci", seed=1, ...) -> Path``; ``select_text(...)`` for the text only.
"""
import argparse
import datetime
import functools
import hashlib
import io
import json
import logging
import math
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prep_s2t_data as prep  # noqa: E402  (features, zip, manifests, spm: shared with the generic prep)

logger = logging.getLogger("build_ddtp_st")

#: apt's source lists under a root directory ("/" for the system), in the order apt reads them
APT_SOURCE_LISTS = ("etc/apt/sources.list", "etc/apt/sources.list.d")
#: in the cache dir: the source the cached Translation files were fetched from (MANIFEST.json apt_source)
APT_SOURCE_RECORD = "apt_source.json"
LANGS = ("en", "de")
SEEN_VOICES = (
    "en-us+m3", "en-us+f2", "en-gb-x-rp+m5", "en-us+f4", "en-029+m1", "en-gb-scotland+f3", "en-gb+m2", "en-us-nyc+f1",
)
UNSEEN_VOICES = ("en-gb-x-gbclan+m4", "en-gb-x-gbcwmd+f5")
SIZES = {
    "ci": dict(train=200, dev=20, test=20, min_words=3, max_words=12, plain=False),
    # plain English: every word is in Debian's English word list (no package names, versions or code
    # identifiers read aloud), 3-16 words; what a small model can learn to listen to at CPU budget.
    # The pools hold ~4.6k/221/202 such pairs (train/dev/test), so the split sizes are "all of them".
    "small": dict(train=4700, dev=230, test=210, min_words=3, max_words=16, plain=True),
    "medium": dict(train=10000, dev=1000, test=1000, min_words=3, max_words=40, plain=False),
}
BASE_SPLITS = ("train", "dev", "test")
UNSEEN_SPLITS = {"dev_unseen": "dev", "test_unseen": "test"}
SPLIT_RULE = "sha256(Package) % 100: 0-3 test, 4-7 dev, 8-99 train"
RATE, PITCH, GAIN, SNR_DB = (140, 200), (35, 65), (0.3, 0.9), (15.0, 40.0)
SAMPLE_RATE = 16000
BUILDER_VERSION = 1


class BuildError(prep.DataPrepError):
    """A missing tool, a failed download or inconsistent output dir; the CLI prints one line, exit 2."""


class ParamsMismatch(BuildError):
    """``out_dir`` holds features of a build with other parameters (seed, size, text, voices...)."""


# --------------------------------------------------------------------------- DDTP text
def _apt_helper() -> str:
    for name in ("/usr/lib/apt/apt-helper", "/usr/lib/apt/apt-tool"):
        if os.access(name, os.X_OK):
            return name
    found = shutil.which("apt-helper")
    if found:
        return found
    raise BuildError("neither /usr/lib/apt/apt-helper nor apt-tool found (needs Debian/Ubuntu apt), or pass --translations-dir")


@dataclass(frozen=True)
class AptSource:
    """One 'deb' source (URI + suite, with its 'main' component) of an apt configuration."""

    uri: str
    suite: str
    component: str
    signed_by: Optional[str]  #: keyring path(s) or fingerprint(s); an inline deb822 key block as is
    origin: str  #: "<file>:<line>" of the entry

    def translation_url(self, lang: str) -> str:
        return f"{self.uri}/dists/{self.suite}/{self.component}/i18n/Translation-{lang}"

    def record(self) -> dict:
        return dict(uri=self.uri, suite=self.suite, component=self.component, signed_by=self.signed_by,
                    origin=self.origin, translations={lang: self.translation_url(lang) for lang in LANGS})


def _deb822_stanzas(text: str):
    """(first line number, {lower-case field: value}) of each stanza of a deb822 file; comments skipped,
    continuation lines joined with newlines (`` .`` is an empty line)."""
    fields, start, key = {}, None, None
    for n, line in enumerate(text.splitlines() + [""], 1):
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                yield start, fields
            fields, start, key = {}, None, None
        elif line[0] in " \t" and key is not None:
            fields[key] += "\n" + ("" if line.strip() == "." else line.strip())
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            fields[key] = value.strip()
            start = start or n


def _one_line_entries(text: str):
    """(line number, type, {option: value}, uri, suite, components) of a one-line sources.list."""
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        kind, rest = (line.split(None, 1) + [""])[:2]
        options = {}
        if rest.startswith("["):
            inside, _, rest = rest[1:].partition("]")
            for opt in inside.split():
                key, _, value = opt.partition("=")
                options[key.lower()] = value
        words = rest.split()
        if len(words) >= 2:
            yield n, kind, options, words[0], words[1], words[2:]


def apt_sources(root="/") -> List[AptSource]:
    """Every enabled 'deb' (not deb-src) source with a ``main`` component in the apt configuration under
    ``root`` (``/`` for the system's): ``etc/apt/sources.list``, then ``etc/apt/sources.list.d/*.list``
    (one-line format) and ``*.sources`` (deb822), in apt's order; one entry per URI and suite."""
    root = Path(root)
    files = [root / APT_SOURCE_LISTS[0]]
    parts = root / APT_SOURCE_LISTS[1]
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    found = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, IsADirectoryError):
            continue
        except OSError as e:
            raise BuildError(f"{path}: cannot read apt source list: {e}") from None
        if path.suffix == ".sources":
            for n, f in _deb822_stanzas(text):
                if f.get("enabled", "yes").lower() == "no" or "deb" not in f.get("types", "").split():
                    continue
                if "main" in f.get("components", "").split():
                    found += [AptSource(uri.rstrip("/"), suite, "main", f.get("signed-by", "").strip() or None,
                                        f"{path}:{n}")
                              for uri in f.get("uris", "").split() for suite in f.get("suites", "").split()]
        else:
            for n, kind, options, uri, suite, components in _one_line_entries(text):
                if kind == "deb" and "main" in components:
                    found.append(AptSource(uri.rstrip("/"), suite, "main", options.get("signed-by") or None,
                                           f"{path}:{n}"))
    return found


def _is_debian_release(src: AptSource) -> bool:
    """A Debian archive (a 'debian' URI path segment, or signed with Debian's archive keyring) and a
    release suite (bookworm, trixie, stable, sid ...: not -updates/-security/-backports, which hold no
    Translation files)."""
    path = src.uri.split("://", 1)[-1].split("/")[1:] if "://" in src.uri else src.uri.split("/")
    debian = "debian" in path or "debian-archive-keyring" in (src.signed_by or "")
    return debian and "-" not in src.suite and "/" not in src.suite


def debian_source(root="/") -> AptSource:
    """The first Debian 'main' deb source of the apt configuration under ``root`` (see ``apt_sources``)."""
    sources = apt_sources(root)
    for src in sources:
        if _is_debian_release(src):
            return src
    listed = "; ".join(f"{s.uri} {s.suite} ({s.origin})" for s in sources[:4]) or "none"
    raise BuildError(f"no Debian 'main' deb source in {Path(root) / APT_SOURCE_LISTS[0]} or "
                     f"{Path(root) / APT_SOURCE_LISTS[1]}/*.list|*.sources (main sources found: {listed}); "
                     "add one, or pass --translations-dir")


def recorded_apt_source(cache_dir: Path) -> Optional[dict]:
    """The source recorded by ``fetch_translations`` beside the Translation files (None if absent)."""
    path = Path(cache_dir) / APT_SOURCE_RECORD
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def fetch_translations(cache_dir: Path, refresh: bool = False, apt_root="/") -> Dict[str, Path]:
    """Translation-en/-de of the main suite of the system's Debian source (``debian_source(apt_root)``),
    decompressed into ``cache_dir`` (reused unless ``refresh``); the source is logged and recorded in
    ``cache_dir``/apt_source.json."""
    cache_dir = Path(cache_dir)
    out = {lang: cache_dir / f"Translation-{lang}" for lang in LANGS}
    if not refresh and all(p.is_file() and p.stat().st_size > 0 for p in out.values()):
        used = recorded_apt_source(cache_dir)
        logger.info("DDTP text: cached Translation files in %s (from %s)", cache_dir,
                    f"{used['uri']} {used['suite']} {used['component']}" if used else "an unrecorded source")
        return out
    source = debian_source(apt_root)
    logger.info("DDTP text from apt source %s %s %s (signed-by %s; %s)", source.uri, source.suite,
                source.component, source.signed_by or "apt's trusted keys", source.origin)
    signed_by = source.signed_by
    if signed_by and signed_by.lstrip().startswith("-----BEGIN"):  # deb822 inline key: one-line needs a file
        key_file = cache_dir / "signed-by.asc"
        cache_dir.mkdir(parents=True, exist_ok=True)
        key_file.write_text(signed_by.strip() + "\n")
        signed_by = str(key_file.resolve())
    elif signed_by:
        for key in signed_by.split(","):
            if key.startswith("/") and not Path(key).is_file():
                raise BuildError(f"{key} (Signed-By of {source.origin}) missing: "
                                 "apt-get install -y debian-archive-keyring")
    if shutil.which("apt-get") is None:
        raise BuildError("apt-get not found: DDTP text comes from Debian's apt index (or pass --translations-dir)")
    lists = cache_dir / "lists"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    (cache_dir / "cache").mkdir(exist_ok=True)
    (cache_dir / APT_SOURCE_RECORD).unlink(missing_ok=True)  # written again once both files are in place
    sources = cache_dir / "sources.list"
    options = f"[signed-by={signed_by}] " if signed_by else ""
    sources.write_text(f"deb {options}{source.uri} {source.suite} {source.component}\n")
    cmd = [
        "apt-get", "update",
        "-o", f"Dir::State::Lists={lists.resolve()}",
        "-o", f"Dir::Etc::SourceList={sources.resolve()}",
        "-o", "Dir::Etc::SourceParts=/nonexistent",
        "-o", f"Dir::Cache={(cache_dir / 'cache').resolve()}",
        "-o", "Acquire::Languages=" + ",".join(LANGS),
        "-o", "Acquire::IndexTargets::deb::Packages::DefaultEnabled=false",  # translations only
    ]
    logger.info("fetching DDTP translations: %s", " ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True)
    tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
    if r.returncode != 0:
        raise BuildError(f"apt-get update of {source.uri} {source.suite} ({source.origin}) failed "
                         f"(exit {r.returncode}; network?): {tail}")
    helper = _apt_helper()
    for lang, dest in out.items():
        found = sorted(lists.glob(f"*_i18n_Translation-{lang}*"))
        if not found:
            raise BuildError(f"apt-get update fetched no Translation-{lang} (network or mirror problem?): {tail}")
        tmp = dest.with_name(dest.name + ".tmp")
        with open(tmp, "wb") as f:
            r = subprocess.run([helper, "cat-file", str(found[0])], stdout=f, stderr=subprocess.PIPE, text=False)
        if r.returncode != 0:
            raise BuildError(f"{helper} cat-file {found[0]} failed: {r.stderr.decode(errors='replace').strip()}")
        os.replace(tmp, dest)
    record = cache_dir / f"{APT_SOURCE_RECORD}.tmp"
    record.write_text(json.dumps(source.record(), indent=1) + "\n", encoding="utf-8")
    os.replace(record, cache_dir / APT_SOURCE_RECORD)
    return out


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
    package: str
    en: str
    de: str


def extract_pairs(translation_en: Path, translation_de: Path) -> List[Pair]:
    """All unique (en sentence → de sentence) pairs with their package, in file order (appendix A)."""
    en, de = parse_translation(translation_en, "en"), parse_translation(translation_de, "de")
    pairs: Dict[str, Pair] = {}

    def add(a: str, b: str, pkg: str):
        a, b = prep.clean_text(a), prep.clean_text(b)
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


def _keep(p: Pair, min_words: int, max_words: int, plain: bool = False) -> bool:
    words = p.en.split()
    if not (min_words <= len(words) <= max_words) or p.en == p.de:
        return False
    if plain and not is_plain(p.en):
        return False
    if re.search(r"https?:|www\.|@|\[\[|\]\]", p.en + " " + p.de):  # URLs, mails, espeak phoneme brackets
        return False
    return 0.5 <= len(p.de) / max(1, len(p.en)) <= 2.5


def select_text(
    translations: Dict[str, Path], size: str = "ci", seed: int = 1, counts: Optional[Dict[str, int]] = None
) -> Tuple[Dict[str, List[Pair]], Dict[str, int]]:
    """Filtered, deduplicated, package-split pairs; returns ({split: pairs}, {split: pool size})."""
    spec = dict(SIZES[size])
    if counts:
        spec.update(counts)
    pools: Dict[str, List[Pair]] = {s: [] for s in BASE_SPLITS}
    seen_skeletons = set()
    for p in extract_pairs(translations["en"], translations["de"]):
        if not _keep(p, spec["min_words"], spec["max_words"], spec.get("plain", False)):
            continue
        key = skeleton(p.en, p.package)
        if key in seen_skeletons:
            continue
        seen_skeletons.add(key)
        pools[split_of(p.package)].append(p)
    chosen = {}
    for s in BASE_SPLITS:
        pool = list(pools[s])
        random.Random(f"ddtp-st:{seed}:{s}").shuffle(pool)
        if len(pool) < spec[s]:
            logger.warning("split %s: only %d pairs available (asked for %d)", s, len(pool), spec[s])
        chosen[s] = pool[: spec[s]]
    return chosen, {s: len(v) for s, v in pools.items()}


# --------------------------------------------------------------------------- speech
@dataclass(frozen=True)
class UttSpec:
    id: str
    split: str
    voice: str
    rate: int
    pitch: int
    gain: float
    snr_db: float
    noise_seed: int
    src_text: str
    tgt_text: str
    package: str


def plan_utterances(text: Dict[str, List[Pair]], seed: int) -> Dict[str, List[UttSpec]]:
    """Every random choice of the synthesis, fixed up front from (seed, utterance id)."""
    plan = {}
    for split in list(BASE_SPLITS) + list(UNSEEN_SPLITS):
        pairs = text[UNSEEN_SPLITS.get(split, split)]
        voices = UNSEEN_VOICES if split in UNSEEN_SPLITS else SEEN_VOICES
        specs = []
        for i, p in enumerate(pairs):
            utt_id = f"{split}_{i:05d}"
            rng = random.Random(f"ddtp-st:{seed}:{utt_id}")
            specs.append(
                UttSpec(
                    id=utt_id,
                    split=split,
                    voice=voices[rng.randrange(len(voices))],
                    rate=rng.randint(*RATE),
                    pitch=rng.randint(*PITCH),
                    gain=round(rng.uniform(*GAIN), 4),
                    snr_db=round(rng.uniform(*SNR_DB), 2),
                    noise_seed=rng.getrandbits(63),
                    src_text=p.en,
                    tgt_text=p.de,
                    package=p.package,
                )
            )
        plan[split] = specs
    return plan


def espeak_version() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise BuildError("espeak-ng not found: run `apt-get install -y espeak-ng` (or pass --install-deps)")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"text-to-speech:\s*(\S+)", out)
    return m.group(1) if m else out.strip()


def check_voices(voices: Sequence[str]):
    """espeak-ng silently falls back for unknown variants, so check languages and variants up front."""
    langs = set(subprocess.run(["espeak-ng", "--voices"], capture_output=True, text=True).stdout.split())
    listing = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True).stdout
    variants = set(re.findall(r"!v/(\S+)", listing))
    for v in voices:
        lang, _, variant = v.partition("+")
        if lang not in langs or (variant and variant not in variants):
            raise BuildError(f"espeak-ng voice {v!r} not available (language {lang!r} or variant {variant!r} missing)")


def synthesize(spec: UttSpec) -> np.ndarray:
    """16 kHz int16 waveform of one utterance (espeak-ng → resample → gain → noise → quantise)."""
    import soundfile as sf
    from scipy.signal import resample_poly

    cmd = ["espeak-ng", "-v", spec.voice, "-s", str(spec.rate), "-p", str(spec.pitch), "--stdout"]
    r = subprocess.run(cmd, input=spec.src_text.encode("utf-8"), capture_output=True)
    if r.returncode != 0 or len(r.stdout) < 100:
        raise BuildError(f"espeak-ng failed for {spec.id} ({spec.voice}): {r.stderr.decode(errors='replace').strip()}")
    wav, sr = sf.read(io.BytesIO(r.stdout), dtype="float64")
    if wav.ndim > 1:
        wav = wav.mean(axis=1)
    if sr != SAMPLE_RATE:
        g = math.gcd(SAMPLE_RATE, sr)  # 22050 -> 16000: up 320, down 441
        wav = resample_poly(wav, SAMPLE_RATE // g, sr // g)
    wav = wav * spec.gain / max(1e-4, float(np.abs(wav).max()))
    power = float(np.mean(wav**2)) + 1e-10
    noise = np.random.default_rng(spec.noise_seed).normal(0.0, math.sqrt(power / 10 ** (spec.snr_db / 10)), wav.shape)
    return np.clip(np.round((wav + noise) * 32768.0), -32768, 32767).astype(np.int16)


def render(spec: UttSpec) -> np.ndarray:
    """fbank (n_frames, 80) float32 of one utterance, exactly as stored in the corpus."""
    pcm = synthesize(spec)
    return prep.compute_fbank(pcm.astype(np.float32) / 32768.0, SAMPLE_RATE)


def _utt_job(args):
    spec, out_dir, dtype, save_audio = args
    pcm = synthesize(spec)
    if save_audio:
        import soundfile as sf

        flac = Path(out_dir) / "flac" / f"{spec.id}.flac"
        flac.parent.mkdir(exist_ok=True)
        sf.write(flac.with_suffix(".tmp.flac"), pcm, SAMPLE_RATE, subtype="PCM_16")
        os.replace(flac.with_suffix(".tmp.flac"), flac)
    feats = prep.compute_fbank(pcm.astype(np.float32) / 32768.0, SAMPLE_RATE)
    return spec.id, prep.FeatureStore(out_dir).save(spec.id, feats, dtype), len(pcm) / SAMPLE_RATE


# --------------------------------------------------------------------------- build
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_lines(path: Path, lines: Sequence[str]):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)


def install_espeak():
    logger.info("installing espeak-ng with apt-get")
    r = subprocess.run(["apt-get", "install", "-y", "espeak-ng"], capture_output=True, text=True)
    if r.returncode != 0:
        tail = " | ".join(r.stderr.strip().splitlines()[-2:])
        raise BuildError(f"apt-get install -y espeak-ng failed (root? try apt-get update first): {tail}")


def _params(size, seed, counts, feature_dtype, text_sha) -> dict:
    return dict(
        builder_version=BUILDER_VERSION, size=size, seed=seed, counts=counts or {}, feature_dtype=feature_dtype,
        seen_voices=list(SEEN_VOICES), unseen_voices=list(UNSEEN_VOICES), text_sha256=text_sha,
    )


def _is_complete(out_dir: Path, params: dict) -> bool:
    m = out_dir / "MANIFEST.json"
    if not m.is_file():
        return False
    try:
        manifest = json.loads(m.read_text())
    except ValueError:
        return False
    if manifest.get("params") != params:
        return False
    return all((out_dir / name).is_file() and sha256_file(out_dir / name) == digest for name, digest in manifest["outputs"].items())


def build(
    out_dir,
    size: str = "ci",
    seed: int = 1,
    workers: int = 2,
    spm_vocab_size: Optional[int] = None,
    spm_type: str = "unigram",
    translations_dir: Optional[Path] = None,
    cache_dir: Optional[Path] = None,
    refresh: bool = False,
    install_deps: bool = False,
    save_audio: bool = False,
    feature_dtype: str = "float32",
    keep_npy: bool = False,
    overwrite: bool = False,
    counts: Optional[Dict[str, int]] = None,
    progress: bool = True,
) -> Path:
    """Build (or finish, or verify) the corpus in ``out_dir``; returns ``out_dir`` as a Path.

    ``translations_dir`` holds ready Translation-en / Translation-de files (skips apt); otherwise they
    are fetched into ``cache_dir`` (default ``<out_dir>/apt``) once and reused. ``counts`` overrides
    the split sizes of ``size`` (e.g. ``{"train": 50}``). Re-running with the same arguments only does
    what is missing; different arguments on an existing build need ``overwrite=True``.
    """
    t0 = time.time()
    if size not in SIZES:
        raise BuildError(f"unknown size {size!r} (choose from {', '.join(SIZES)})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if translations_dir is not None:
        translations = {lang: Path(translations_dir) / f"Translation-{lang}" for lang in LANGS}
        for p in translations.values():
            if not p.is_file():
                raise BuildError(f"--translations-dir: {p} not found")
    else:
        translations = fetch_translations(Path(cache_dir) if cache_dir else out_dir / "apt", refresh)
    apt_source = recorded_apt_source(translations["en"].parent)  # what fetch_translations used (None: unknown)
    inputs = {
        f"Translation-{lang}": dict(sha256=sha256_file(p), bytes=p.stat().st_size,
                                     source=apt_source["translations"][lang] if apt_source else "--translations-dir")
        for lang, p in translations.items()
    }
    text, pools = select_text(translations, size, seed, counts)
    text_sha = hashlib.sha256(
        json.dumps({s: [asdict(p) for p in v] for s, v in text.items()}, ensure_ascii=False).encode()
    ).hexdigest()
    params = _params(size, seed, counts, feature_dtype, text_sha)
    params["spm"] = dict(vocab_size=spm_vocab_size, type=spm_type) if spm_vocab_size else None
    if not overwrite and _is_complete(out_dir, params):
        logger.info("%s is complete and verified; nothing to do", out_dir)
        return out_dir

    if shutil.which("espeak-ng") is None and install_deps:
        install_espeak()
    version = espeak_version()
    check_voices(SEEN_VOICES + UNSEEN_VOICES)

    state = out_dir / "build_params.json"
    if overwrite:
        for name in ("fbank80", "flac"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        for p in [out_dir / "fbank80.zip", out_dir / "MANIFEST.json", state]:
            p.unlink(missing_ok=True)
    feature_params = {k: v for k, v in params.items() if k != "spm"}
    feature_params["espeak_ng_version"] = version  # features of two espeak-ng versions must not mix
    if state.is_file() and json.loads(state.read_text()) != feature_params:
        raise ParamsMismatch(
            f"{out_dir} holds a build with other parameters ({state}); use a fresh --out-dir or --overwrite"
        )
    state.write_text(json.dumps(feature_params, indent=1, ensure_ascii=False) + "\n")

    # text files
    text_dir = out_dir / "text"
    text_dir.mkdir(exist_ok=True)
    plan = plan_utterances(text, seed)
    for s in BASE_SPLITS:
        _write_lines(text_dir / f"{s}.en", [p.en for p in text[s]])
        _write_lines(text_dir / f"{s}.de", [p.de for p in text[s]])
        _write_lines(
            text_dir / f"{s}.pairs.tsv",
            ["id\tpackage\tsrc_text\ttgt_text"] + [f"{u.id}\t{u.package}\t{u.src_text}\t{u.tgt_text}" for u in plan[s]],
        )

    # speech + features (resumable)
    store = prep.FeatureStore(out_dir)
    done = store.done()
    if save_audio:
        done &= {p.name[: -len(".flac")] for p in (out_dir / "flac").glob("*.flac")}
    specs = [u for s in plan for u in plan[s]]
    todo = [u for u in specs if u.id not in done]
    if len(todo) < len(specs):
        logger.info("features: %d of %d utterances already done, skipping them", len(specs) - len(todo), len(specs))
    import scipy.signal  # noqa: F401  (import once before the workers fork: ~1 s each otherwise)

    prep.map_with_progress(
        _utt_job, [(u, str(out_dir), feature_dtype, save_audio) for u in todo], workers, "espeak-ng + fbank", progress
    )
    index = store.pack(keep_npy=keep_npy, progress=progress)
    stats = {}
    for s, specs_s in plan.items():
        rows = []
        for u in specs_s:
            audio, n_frames = index[u.id]
            rows.append(dict(id=u.id, audio=audio, n_frames=n_frames, tgt_text=u.tgt_text, speaker=u.voice, src_text=u.src_text))
        prep.write_manifest(out_dir / f"{s}.tsv", rows)
        frames = sum(r["n_frames"] for r in rows)
        stats[s] = dict(pairs=len(rows), hours=round(frames / 100 / 3600, 4), voices=sorted({u.voice for u in specs_s}))

    spm_info = None
    if spm_vocab_size:
        spm_info = _build_joint_spm(out_dir, spm_vocab_size, spm_type)

    outputs = [f"{s}.tsv" for s in plan] + ["fbank80.zip"]
    outputs += [f"text/{s}.{ext}" for s in BASE_SPLITS for ext in ("en", "de", "pairs.tsv")]
    if spm_info:
        outputs += ["spm_joint.model", "dict.txt", "config.yaml"]
        outputs += [f"text/{s}.spm.{lang}" for s in BASE_SPLITS for lang in LANGS]
    manifest = dict(
        name="DDTP-ST en-de",
        builder="examples/speech_to_text/build_ddtp_st.py",
        size=size,
        seed=seed,
        params=params,
        created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        build_seconds=round(time.time() - t0, 1),
        inputs=inputs,
        apt_source=apt_source,
        espeak_ng_version=version,
        voices=dict(seen=list(SEEN_VOICES), unseen=list(UNSEEN_VOICES)),
        synthesis=dict(rate=list(RATE), pitch=list(PITCH), peak_gain=list(GAIN), snr_db=list(SNR_DB),
                       sample_rate=SAMPLE_RATE, resample="scipy.signal.resample_poly up/down (22050->16000: 320/441)",
                       quantisation="int16"),
        text=dict(min_words=SIZES[size]["min_words"], max_words=SIZES[size]["max_words"],
                  plain_words=(dict(word_list=WORD_LIST, sha256=sha256_file(Path(WORD_LIST)))
                               if SIZES[size].get("plain") else False), split_rule=SPLIT_RULE,
                  dedup="masked skeleton of the English side", pool_sizes=pools,
                  unseen_splits="dev_unseen/test_unseen = dev/test sentences spoken by held-out voices"),
        splits=stats,
        features=dict(kind="80-dim Kaldi fbank (kaldi-native-fbank via imitkd.features)", dtype=feature_dtype,
                      file="fbank80.zip", frame_shift_ms=10),
        spm=spm_info,
        versions=dict(python=platform.python_version(), numpy=np.__version__, **_versions()),
        outputs={name: sha256_file(out_dir / name) for name in outputs},
    )
    tmp = out_dir / "MANIFEST.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / "MANIFEST.json")
    logger.info("built %s in %.1f s: %s", out_dir, time.time() - t0, {s: v["pairs"] for s, v in stats.items()})
    return out_dir


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("scipy", "soundfile", "kaldi-native-fbank", "sentencepiece"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _build_joint_spm(out_dir: Path, vocab_size: int, spm_type: str) -> dict:
    import sentencepiece as spm

    text_dir = out_dir / "text"
    train = [line for lang in LANGS for line in (text_dir / f"train.{lang}").read_text(encoding="utf-8").splitlines()]
    model = prep.train_spm(train, out_dir / "spm_joint", spm_type, vocab_size)
    n = prep.write_fairseq_dict(model, out_dir / "dict.txt")
    sp = spm.SentencePieceProcessor(model_file=str(model))
    for s in BASE_SPLITS:
        for lang in LANGS:
            lines = (text_dir / f"{s}.{lang}").read_text(encoding="utf-8").splitlines()
            _write_lines(text_dir / f"{s}.spm.{lang}", [" ".join(sp.encode(line, out_type=str)) for line in lines])
    prep.write_config(out_dir, "dict.txt", model, cmvn="utterance", specaugment="lb", audio_root=out_dir)
    return dict(model="spm_joint.model", dict="dict.txt", type=spm_type, requested_size=vocab_size, pieces=n + 4)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out-dir", required=True, type=Path, help="output directory")
    p.add_argument("--size", default="ci", choices=sorted(SIZES), help="corpus size (default ci)")
    p.add_argument("--seed", default=1, type=int, help="seed of text selection and synthesis (default 1)")
    p.add_argument("--workers", default=2, type=int, help="synthesis processes (default 2)")
    p.add_argument("--spm-vocab-size", type=int, help="also train a joint en+de sentencepiece model of this size + dict.txt + config.yaml")
    p.add_argument("--spm-type", default="unigram", choices=["unigram", "bpe"], help="joint sentencepiece model type")
    p.add_argument("--translations-dir", type=Path, help="use Translation-en/-de from this dir (no apt-get update)")
    p.add_argument("--cache-dir", type=Path, help="where apt lists and Translation files are cached (default <out>/apt)")
    p.add_argument("--refresh", action="store_true", help="re-run apt-get update even if Translation files are cached")
    p.add_argument("--install-deps", action="store_true", help="apt-get install -y espeak-ng if it is missing")
    p.add_argument("--save-audio", action="store_true", help="also keep the 16 kHz audio as flac/<id>.flac")
    p.add_argument("--feature-dtype", default="float32", choices=["float32", "float16"], help="dtype of stored features")
    p.add_argument("--keep-npy", action="store_true", help="keep fbank80/<id>.npy after packing the zip")
    p.add_argument("--overwrite", action="store_true", help="discard features of an earlier build in --out-dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        build(
            args.out_dir, args.size, args.seed, args.workers, args.spm_vocab_size, args.spm_type, args.translations_dir,
            args.cache_dir, args.refresh, args.install_deps, args.save_audio, args.feature_dtype, args.keep_npy,
            args.overwrite, progress=not args.no_progress,
        )
    except prep.DataPrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
