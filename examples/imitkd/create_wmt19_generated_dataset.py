#!/usr/bin/env python3
"""Replace the text columns of a fairseq speech-to-text manifest by fairseq-generate hypotheses.

Two uses in ImitKD speech translation:

* sequence-level KD: ``tgt_text`` <- the NMT expert's translations of the transcripts (``-o``);
* ImitKDT / KDT: ``src_text`` <- an ASR model's transcripts of the audio (``-a``), so that the text
  expert reads (and, with ``-o`` as well, translated) what a real ASR front end would produce.

Rows are joined by the fairseq-generate **sample id** (``H-<id>``/``D-<id>``), which is the index of
the sample in the generated dataset: the manifest's data-row index for ``--task speech_to_text``,
the line index of the binarized text for ``--task translation``. Never by text, and columns are
addressed by header **name**; every other column and the column order are kept byte for byte.
Where the log has reference (``T-``) lines, they are compared with the manifest to prove that the
ids really index this manifest (same split, same row order).

The manifest is read and written by ``imitkd_data.manifest`` (the package beside the plugin; standard
library only, as fairseq reads manifests); ``--remove-bpe`` uses fairseq's ``post_process`` and
``--detokenize moses`` uses sacremoses (both imported only when asked for). Run ``--help`` for the
complete command sequences.
"""
from __future__ import annotations

import argparse
import csv
import html
import os
import re
import signal
import sys
import threading
import unicodedata
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from imitkd_data import atomic
from imitkd_data.errors import ManifestError
from imitkd_data.manifest import Table, first_non_utf8_line, read_table, write_table

PROG = "create_wmt19_generated_dataset.py"
OUTPUT_SUFFIX = "_generated"
#: symbols accepted by fairseq.data.data_utils.post_process (what fairseq-generate --post-process takes)
BPE_SYMBOLS = ("@@ ", "@@", "subword_nmt", "sentencepiece", "wordpiece", "letter", "silence", "_EOW", "none")
#: fairseq-generate line prefixes whose id field is validated (P-, A-, E-, I-, W- lines are ignored)
_SAMPLE_LINE = re.compile(r"([STHD])-([^\t]*)\t")
#: a sample line behind a file name, as ``grep PATTERN a.log b.log`` prints it
_GREP_PREFIX = re.compile(r"([^\t:]+):[STHD]-\d+\t")
#: how unknown tokens appear in T- lines: escaped by fairseq, raw, or as sentencepiece renders them
_UNK = re.compile(r"<<unk>>|<unk>|\u2047")
_WILDCARD = "\x00"
MAX_LISTED_IDS = 20


class InputError(Exception):
    """A bad input or argument; reported as one line ``error: ...`` with exit status 2."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived: raised in the main thread (like KeyboardInterrupt for SIGINT) so that
    the temporary output file is removed on the way out; reported as one line, status 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class LogEntry(NamedTuple):
    """One sample of a fairseq-generate log."""

    hyp: str  #: text of the best hypothesis (the first ``H-``/``D-`` line of the id), as printed
    ref: Optional[str]  #: text of the ``T-`` line, None if the log has none for this id
    line: int  #: 1-based line number of the hypothesis line (for messages)
    ref_line: Optional[int]  #: 1-based line number of the ``T-`` line


#: a fairseq S2T manifest: path, header, data rows (lists of str), each row's line number; ``column(name)``
Manifest = Table


class Job(NamedTuple):
    """One log to apply: which flag gave it, the column it replaces, the columns its T- lines may match."""

    flag: str
    log: str
    column: str
    check_columns: Tuple[str, ...]
    lang: Optional[str]


class CheckResult(NamedTuple):
    column: str
    matched: int
    mismatched: int
    unverifiable: int
    first_mismatch: Optional[Tuple[int, LogEntry]]


# --------------------------------------------------------------------------------------------- input
def read_manifest(path: str, required: Sequence[str]) -> Manifest:
    """Read a fairseq S2T manifest exactly as fairseq does (``imitkd_data.manifest.read_table``: tab,
    ``QUOTE_NONE``: no quoting, no escapes; blank lines are skipped, so sample ids count non-blank data rows).

    Raises InputError for a missing/unreadable or non-UTF-8 file, a byte-order mark, a header lacking one of
    ``required``, duplicate column names, no data rows, or a row whose field count differs from the header's.
    """
    try:
        table = read_table(path)
    except ManifestError as e:
        raise InputError(str(e)) from None
    header = table.header
    if not header:
        raise InputError(f"{path}: empty manifest (no header row)")
    if not table.rows:
        raise InputError(f"{path}: no data rows, only a header")
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise InputError(f"{path}: duplicate column name(s) in header: {', '.join(dup)}")
    absent = [c for c in required if c not in header]
    if absent:
        raise InputError(f"{path}: header lacks column(s) {', '.join(repr(c) for c in absent)} "
                         f"(header: {' '.join(header)[:200]})")
    for row, line in zip(table.rows, table.line_numbers):
        if len(row) != len(header):
            raise InputError(f"{path}:{line}: {len(row)} tab-separated fields, the header has {len(header)}")
    return table


def parse_generate_log(path: str, line_type: str = "D") -> Dict[int, LogEntry]:
    """Parse a fairseq-generate (or fairseq-interactive) log into ``{sample id: LogEntry}``.

    ``line_type`` is ``"D"`` (detokenized hypothesis) or ``"H"`` (tokenized hypothesis). Any other
    line (logging, the BLEU line, ``P-``/``A-`` lines ...) is ignored. With ``--nbest N`` the first
    (best) of an id's consecutive hypotheses is kept. Ids that have a ``T-`` line but no hypothesis
    (e.g. a truncated log) are not in the result.

    Raises InputError naming file and line for: a S-/T-/H-/D- line whose id is not a non-negative
    integer, a H-/D- line without ``<id>\\t<score>\\t<text>``, an id whose S-, T-, H- or D- line
    reappears after other samples (concatenated or repeated logs, e.g. ``cat a.log b.log`` or
    ``grep -h '^[HD]-' a.log b.log``; an n-best list prints an id's H-/D- lines one right after the
    other), lines prefixed with a file name (``grep`` over several files), and a log without any H-/D-
    line of the requested type (``--quiet`` run, or not a fairseq-generate log).
    """
    hyps: Dict[int, Tuple[str, int]] = {}
    refs: Dict[int, Tuple[str, int]] = {}
    sources: Dict[int, Tuple[str, int]] = {}
    first_hyp_line: Dict[str, Dict[int, int]] = {"H": {}, "D": {}}  # kind -> id -> line of its first H-/D-
    last_hyp_id: Dict[str, Optional[int]] = {"H": None, "D": None}  # kind -> id of the previous H-/D- line
    seen_types = set()
    last_id = last_kind = None  # id and kind of the previous S-/T-/H-/D- line
    n_lines = 0
    try:
        with open(path, encoding="utf-8", newline="\n") as f:
            for n_lines, raw in enumerate(f, 1):
                line = raw.rstrip("\r\n")
                m = _SAMPLE_LINE.match(line)
                if m is None:
                    if line[:2] in ("H-", "D-") and "\t" not in line:
                        raise InputError(f"{path}:{n_lines}: {line[0]}- line without tab-separated id, score "
                                         f"and text: {_short(line)}")
                    prefixed = _GREP_PREFIX.match(line)
                    if prefixed:
                        raise InputError(f"{path}:{n_lines}: line starts with a file name ({prefixed.group(1)!r}): "
                                         f"output of grep over several logs? (grep -h drops the names; give "
                                         f"one log per file): {_short(line)}")
                    continue
                kind, id_str = m.group(1), m.group(2)
                if not id_str.isdigit() or not id_str.isascii():
                    raise InputError(f"{path}:{n_lines}: {kind}- line without a numeric sample id "
                                     f"({id_str!r}): {_short(line)}")
                sample_id = int(id_str)
                rest = line[m.end():]
                if kind in "HD":
                    seen_types.add(kind)
                    score, sep, text = rest.partition("\t")
                    if not sep or not _is_float(score):
                        raise InputError(f"{path}:{n_lines}: malformed {kind}- line, expected "
                                         f"'{kind}-<id>\\t<score>\\t<text>': {_short(line)}")
                    first = first_hyp_line[kind]
                    # n-best list: fairseq prints an id's S-/T- lines, then its hypotheses (H-, D-, P- lines
                    # each) one right after the other, best first. The id again after another sample's or its
                    # own S-/T- lines is a repeat.
                    nbest = last_id == sample_id and last_hyp_id[kind] == sample_id and last_kind in ("H", "D")
                    if sample_id in first and not nbest:
                        raise InputError(f"{path}:{n_lines}: duplicate {kind}- line for id {sample_id} (first at "
                                         f"line {first[sample_id]}, not an n-best list); concatenated or "
                                         f"repeated fairseq-generate output?")
                    first.setdefault(sample_id, n_lines)
                    last_hyp_id[kind] = sample_id
                    if kind == line_type and sample_id not in hyps:
                        hyps[sample_id] = (text, n_lines)  # the best of an n-best list
                else:  # S- or T-: printed once per sample
                    table = refs if kind == "T" else sources
                    if sample_id in table:
                        raise InputError(f"{path}:{n_lines}: duplicate {kind}- line for id {sample_id} (first "
                                         f"at line {table[sample_id][1]}); concatenated or repeated "
                                         f"fairseq-generate output?")
                    table[sample_id] = (rest, n_lines)
                last_id, last_kind = sample_id, kind
    except UnicodeDecodeError:
        raise InputError(f"{path}:{first_non_utf8_line(path)}: not UTF-8 (fairseq-generate writes UTF-8 "
                         f"logs)") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read fairseq-generate log: {_one_line(e)}") from None
    if not hyps:
        if seen_types:
            other = "H" if line_type == "D" else "D"
            raise InputError(f"{path}: no {line_type}- lines in {n_lines} lines (it has {other}- lines: "
                             f"use --hyp-line {other})")
        raise InputError(f"{path}: no H-/D- hypothesis lines in {n_lines} lines (fairseq-generate run with "
                         f"--quiet, or not a fairseq-generate log?)")
    entries = {}
    for sample_id, (text, line_no) in hyps.items():
        ref = refs.get(sample_id)
        entries[sample_id] = LogEntry(text, ref[0] if ref else None, line_no, ref[1] if ref else None)
    return entries


# ------------------------------------------------------------------------------- reference check
def normalize_for_check(text: str) -> str:
    """Reduce a text to what survives tokenization, BPE and detokenization: NFKC, case-folded,
    letters and digits only (so whitespace, punctuation, ``@@``/``\u2581`` BPE markers and
    Moses escapes such as ``&apos;`` vanish). Unknown tokens become a wildcard character."""
    text = _UNK.sub(_WILDCARD, text)
    text = unicodedata.normalize("NFKC", html.unescape(text)).casefold()
    return "".join(ch for ch in text if ch.isalnum() or ch == _WILDCARD)


def _wildcard_match(pattern: str, text: str) -> bool:
    """True if ``text`` equals ``pattern`` where each wildcard matches any (possibly empty) string."""
    parts = pattern.split(_WILDCARD)
    if len(parts) == 1:
        return pattern == text
    first, last = parts[0], parts[-1]
    if len(text) < len(first) + len(last) or not text.startswith(first) or not text.endswith(last):
        return False
    pos, end = len(first), len(text) - len(last)
    for part in parts[1:-1]:  # leftmost placement of each literal part is optimal
        i = text.find(part, pos, end)
        if i < 0:
            return False
        pos = i + len(part)
    return True


def compare_references(entries: Dict[int, LogEntry], manifest: Manifest, column: str) -> CheckResult:
    """Compare every T- text of ``entries`` with the manifest cell of the same row in ``column``.

    A reference that is mostly unknown tokens (fewer known letters/digits than half of the
    manifest text) cannot prove anything and is counted as unverifiable, not as a match.
    """
    col = manifest.column(column)
    matched = mismatched = unverifiable = 0
    first = None
    for sample_id in sorted(entries):
        entry = entries[sample_id]
        if entry.ref is None or sample_id >= len(manifest.rows):
            continue
        ref = normalize_for_check(entry.ref)
        cell = normalize_for_check(manifest.rows[sample_id][col])
        known = len(ref) - ref.count(_WILDCARD)
        if _wildcard_match(ref, cell):
            if _WILDCARD in ref and 2 * known < len(cell):
                unverifiable += 1
            else:
                matched += 1
        else:
            mismatched += 1
            if first is None:
                first = (sample_id, entry)
    return CheckResult(column, matched, mismatched, unverifiable, first)


def check_references(job: Job, entries: Dict[int, LogEntry], manifest: Manifest, columns: Sequence[str],
                     required: bool, max_mismatch: float, log: Callable[[str], None]) -> Optional[CheckResult]:
    """Prove that the log's ids index this manifest by comparing its T- lines (see ``--check-ref``).

    ``columns`` are tried in order; the first in which at most ``max_mismatch`` (a fraction) of the
    compared rows differ is accepted and its CheckResult returned. A log without T- lines returns
    None with a warning, or raises InputError if ``required``. Raises InputError when every
    candidate column fails, naming the log line, the manifest line and both texts.
    """
    if not columns:
        return None
    if not any(e.ref is not None for e in entries.values()):
        if required:
            raise InputError(f"{job.log}: --check-ref: the log has no T- (reference) lines to check")
        log(f"warning: {job.log} has no T- (reference) lines: cannot verify that its ids index {manifest.path}")
        return None
    failures = []
    for column in columns:
        result = compare_references(entries, manifest, column)
        compared = result.matched + result.mismatched
        if not compared:  # every reference was mostly <unk>: nothing to decide on
            log(f"warning: {job.log}: reference check vs {column!r} inconclusive "
                f"({result.unverifiable} references are mostly <unk>)")
            return result
        if result.mismatched <= max_mismatch * compared:
            return result
        failures.append(result)
    failed = " and ".join(f"{r.mismatched} of {r.matched + r.mismatched} T- lines differ from column {r.column!r}"
                          for r in failures)
    sample_id, entry = failures[0].first_mismatch
    cell = manifest.rows[sample_id][manifest.column(failures[0].column)]
    raise InputError(
        f"{job.log}: reference check failed ({job.flag}): {failed} (first: id {sample_id}, log line "
        f"{entry.ref_line}: {_short(entry.ref)} vs {manifest.path} line {manifest.line_numbers[sample_id]}: "
        f"{_short(cell)}); log of another split or row order? (--check-ref off skips this check)")


# ------------------------------------------------------------------------------ hypothesis text
def make_postprocessor(remove_bpe: Optional[str], detokenize: str, lang: Optional[str]) -> Callable[[str], str]:
    """Return ``f(hyp) -> text``: fairseq ``post_process`` BPE removal, optional Moses
    detokenization, then whitespace normalization (a TSV field cannot hold tabs or newlines)."""
    post_process = None
    if remove_bpe is not None:
        try:
            from fairseq.data.data_utils import post_process
        except ImportError as e:  # pragma: no cover - fairseq is a dependency of the package
            raise InputError(f"--remove-bpe needs fairseq: {_one_line(e)}") from None
    detok = None
    if detokenize == "moses":
        try:
            from sacremoses import MosesDetokenizer
        except ImportError as e:
            raise InputError(f"--detokenize moses needs sacremoses: {_one_line(e)}") from None
        detok = MosesDetokenizer(lang=lang)

    def process(text: str) -> str:
        if post_process is not None:
            text = post_process(text, remove_bpe)
        if detok is not None:
            text = detok.detokenize(text.split())
        return " ".join(text.split())

    return process


# ---------------------------------------------------------------------------------------- output
def default_output_path(dataset: str) -> str:
    """``<dir>/<stem>_generated.tsv`` next to the input manifest: ``train_st.tsv`` ->
    ``train_st_generated.tsv`` (fairseq subset ``train_st_generated``); a name not ending in
    ``.tsv`` just gets ``_generated.tsv`` appended."""
    stem, ext = os.path.splitext(dataset)
    return f"{stem if ext.lower() == '.tsv' else dataset}{OUTPUT_SUFFIX}.tsv"


def write_manifest_atomic(path: str, header: Sequence[str], rows: Sequence[Sequence[str]],
                          mode_from: Optional[str] = None, log: Optional[Callable[[str], None]] = None) -> None:
    """Write a manifest (tab-separated, no quoting, ``\\n`` line ends) atomically
    (``imitkd_data.manifest.write_table``: a temporary file beside it, ``.<name>.<host>-<pid>.<random>.tmp``,
    fsync, ``os.replace``; temporary files of killed runs are removed first and ``log``ged). Permissions are
    those of the file replaced, else of ``mode_from``. On any error, and on SIGINT/SIGTERM/SIGHUP under
    ``main``, the temporary file is removed (InputError is raised for errors)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise InputError(f"-O/--out-file {path}: directory {directory} does not exist")
    if os.path.isdir(path):
        raise InputError(f"-O/--out-file {path}: is a directory")
    try:
        write_table(path, header, rows, mode_from=mode_from, log=log)
    except ManifestError as e:  # a field with a tab or line break
        raise InputError(str(e)) from None
    except OSError as e:
        raise InputError(f"{path}: cannot write output: {_one_line(e)}") from None


# ------------------------------------------------------------------------------------------- CLI
DESCRIPTION = """\
Replace tgt_text (-o: the NMT expert's translations, sequence-level KD) and/or src_text
(-a: an ASR model's transcripts, ImitKDT/KDT) of a fairseq speech-to-text manifest by
fairseq-generate hypotheses, joined by sample id; all other columns and their order are kept."""

EPILOG = r"""
how rows are joined
  fairseq-generate prints, per sample, S-<id>, T-<id> (reference), H-<id> (tokenized hypothesis),
  D-<id> (detokenized hypothesis) and P-<id> lines, in length-sorted batch order. <id> is the index
  of the sample in the dataset that was decoded:
    --task speech_to_text : the manifest's data-row index (0 = first row after the header);
    --task translation    : the line index of the text that fairseq-preprocess binarized.
  Row i of -d gets the hypothesis of id i. For a translation log that only holds if the binarized
  text was extracted from this manifest in row order without dropping lines (no length filtering,
  no deduplication): the reference check below catches it when that went wrong. Samples that
  fairseq-generate skipped (--skip-invalid-size-inputs-valid-test, a truncated run) are missing:
  an error, unless --allow-missing keeps their original text. With --nbest N the best is taken.

reference check (--check-ref)
  T- lines and manifest cells are compared after normalization: case-folded, letters and digits
  only (whitespace, punctuation, BPE markers, Moses escapes vanish), <unk>/<<unk>> matching
  anything. "auto" compares
    -o (expert) log -> --tgt-column (the expert's reference is the gold translation it replaces);
    -a (ASR) log    -> --src-column (decoded on an ASR manifest, the reference is the transcript),
                       else --tgt-column (decoded on the ST manifest itself, it is the translation).
  A log without T- lines is accepted with a warning in auto mode (an error for tgt/src). More than
  --max-ref-mismatch of the compared rows differing is an error: the log belongs to another split
  or another row order. Comparison is always against the manifest as read, before replacement.

commands
  imitkd-train / imitkd-generate are fairseq-train / fairseq-generate with this plugin preloaded
  and the torch 2.x fixes applied; plain fairseq-generate works as well (with
  TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 and --required-batch-size-multiple 1 so no sample is dropped).

flow 1: sequence-level KD targets (tgt_text <- the NMT expert's translations of the transcripts)
  # transcripts and translations in manifest row order, columns picked by header name
  awk -F'\t' 'NR==1{for(i=1;i<=NF;i++)c[$i]=i;next} NF{print $c["src_text"] > "kd/train.en";
      print $c["tgt_text"] > "kd/train.de"}' data/train_st.tsv
  # tokenize + BPE both files exactly like the expert's training data (keep every line!) -> kd/train.bpe.{en,de}
  fairseq-preprocess --source-lang en --target-lang de --trainpref kd/train.bpe \
      --srcdict expert/dict.en.txt --tgtdict expert/dict.de.txt --destdir kd/bin --workers 8
  imitkd-generate kd/bin --path expert/checkpoint_best.pt --gen-subset train --beam 5 \
      --max-tokens 8000 --required-batch-size-multiple 1 --remove-bpe --tokenizer moses \
      --source-lang en --target-lang de > kd/expert_train.log          # no --quiet
  python examples/imitkd/create_wmt19_generated_dataset.py -d data/train_st.tsv \
      -o kd/expert_train.log -O data/train_st_seqkd.tsv
  imitkd-train data --config-yaml config_st.yaml --train-subset train_st_seqkd --valid-subset dev_st \
      --task speech_to_text --criterion label_smoothed_cross_entropy --arch s2t_transformer_s ...
  # or ImitKD on top of the KD targets:
  #   --task speech_to_text_kd --criterion imit_kd_CE --expert expert/checkpoint_best.pt --path expert/bin ...

flow 2: ImitKDT (src_text <- ASR transcripts; the expert reads them during ImitKD training)
  imitkd-generate data --task speech_to_text --config-yaml config_asr.yaml --gen-subset train_asr \
      --path asr/checkpoint_best.pt --beam 5 --max-tokens 50000 \
      --required-batch-size-multiple 1 > kd/asr_train.log              # train_asr: same rows as train_st
  python examples/imitkd/create_wmt19_generated_dataset.py -d data/train_st.tsv \
      -a kd/asr_train.log -O data/train_st_asr.tsv
  imitkd-train data --config-yaml config_st.yaml --train-subset train_st_asr --valid-subset dev_st \
      --task speech_to_text_kd --criterion imit_kd_CE --expert-src-column src_text \
      --expert expert/checkpoint_best.pt --path expert/bin --arch s2t_transformer_s ...

flow 3: KDT (both: ASR transcripts and the expert's translations of them)
  # flow 2's first two commands, then flow 1 with src_text taken from data/train_st_asr.tsv, then
  python examples/imitkd/create_wmt19_generated_dataset.py -d data/train_st.tsv \
      -a kd/asr_train.log -o kd/expert_on_asr_train.log -O data/train_st_kdt.tsv
  (the expert log's T- lines are still the gold translations, so its check uses tgt_text)

Both logs share --hyp-line/--remove-bpe/--detokenize; if they need different post-processing,
run the script twice (the second time on the first output). Exit status 0 on success, 2 on any
bad input (one line 'error: ...' on stderr, no output file written), 128 + the signal number when
stopped by SIGINT, SIGTERM or SIGHUP (one line; the hidden temporary file beside the output,
.<name>.<host>-<pid>.<random>.tmp, is removed; one left by a killed run is removed by the next).
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line ``<prog>: error: ...`` (status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (documented in ``--help``)."""
    p = _Parser(prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                description=DESCRIPTION)
    io = p.add_argument_group("input / output")
    io.add_argument("-d", "--dataset", required=True, metavar="TSV",
                    help="speech-to-text manifest (header row with at least 'id' and --tgt-column)")
    io.add_argument("-o", "--output", metavar="LOG",
                    help="fairseq-generate log of the NMT expert's translations: replaces --tgt-column")
    io.add_argument("-a", "--audiotranscripts", metavar="LOG",
                    help="fairseq-generate log of the ASR model's transcripts: replaces --src-column")
    io.add_argument("-O", "--out-file", metavar="TSV",
                    help=f"output manifest (default: <input stem>{OUTPUT_SUFFIX}.tsv next to the input). "
                         "Written atomically; naming the input itself replaces it (also atomically)")
    io.add_argument("--src-column", default="src_text", metavar="COL", help="transcript column (default: src_text)")
    io.add_argument("--tgt-column", default="tgt_text", metavar="COL", help="translation column (default: tgt_text)")
    io.add_argument("--allow-missing", action="store_true",
                    help="keep the original text of rows a log has no hypothesis for (listed on stderr) "
                         "instead of failing")
    io.add_argument("--missing-ids", metavar="FILE",
                    help="also write the manifest ids of all rows left unchanged by --allow-missing, one per line "
                         "(not to -d, -o, -a or -O)")
    hyp = p.add_argument_group("hypothesis text")
    hyp.add_argument("--hyp-line", choices=("D", "H"), default="D",
                     help="take hypotheses from D- lines (default: after fairseq's --post-process/--tokenizer/"
                          "--bpe decoding) or H- lines (tokenized, BPE kept unless generate had --post-process)")
    hyp.add_argument("--remove-bpe", nargs="?", const="@@ ", default=None, metavar="SYMBOL",
                     help="remove BPE from the hypotheses with fairseq's post_process: '@@ ' (default when "
                          "given without value, subword-nmt), sentencepiece, wordpiece, letter, _EOW, ... "
                          "Mostly needed with --hyp-line H")
    hyp.add_argument("--detokenize", choices=("none", "moses"), default="none",
                     help="detokenize the hypotheses with sacremoses (default: none)")
    hyp.add_argument("--lang", metavar="LANG",
                     help="language of the -o hypotheses for --detokenize moses (e.g. de); required then")
    hyp.add_argument("--src-lang", default="en", metavar="LANG",
                     help="language of the -a hypotheses for --detokenize moses (default: en)")
    chk = p.add_argument_group("checks")
    chk.add_argument("--check-ref", choices=("auto", "off", "tgt", "src"), default="auto",
                     help="compare the logs' T- lines with the manifest to prove the ids index its rows: "
                          "auto (default, see below), tgt/src (always that column), off")
    chk.add_argument("--max-ref-mismatch", type=float, default=0.02, metavar="FRACTION",
                     help="tolerated fraction of compared rows whose reference differs (default: 0.02)")
    return p


def _validate_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for flag, path in (("-d/--dataset", args.dataset), ("-o/--output", args.output),
                       ("-a/--audiotranscripts", args.audiotranscripts), ("-O/--out-file", args.out_file),
                       ("--missing-ids", args.missing_ids)):
        if path == "":
            p.error(f"{flag}: empty path")
    if not args.output and not args.audiotranscripts:
        p.error("nothing to do: give -o/--output (expert log) and/or -a/--audiotranscripts (ASR log)")
    if args.remove_bpe is not None and args.remove_bpe not in BPE_SYMBOLS:
        p.error(f"--remove-bpe: unknown symbol {args.remove_bpe!r} (choose from {', '.join(map(repr, BPE_SYMBOLS))})")
    if args.detokenize == "moses" and args.output and not args.lang:
        p.error("--detokenize moses with -o needs --lang (the expert's target language, e.g. de)")
    if args.output and args.audiotranscripts and args.src_column == args.tgt_column:
        p.error("--src-column and --tgt-column name the same column")
    if not 0.0 <= args.max_ref_mismatch <= 1.0:
        p.error("--max-ref-mismatch must be a fraction in [0, 1]")


def run(args: argparse.Namespace, log: Callable[[str], None]) -> str:
    """Do the work for parsed ``args``; returns the output path. Raises InputError on bad input."""
    jobs = []
    if args.output:
        jobs.append(Job("-o", args.output, args.tgt_column, (args.tgt_column,), args.lang))
    if args.audiotranscripts:
        jobs.append(Job("-a", args.audiotranscripts, args.src_column, (args.src_column, args.tgt_column),
                        args.src_lang))
    out_path = args.out_file or default_output_path(args.dataset)
    if args.output and args.audiotranscripts and _same_file(args.output, args.audiotranscripts):
        raise InputError(f"-o/--output {args.output} and -a/--audiotranscripts {args.audiotranscripts} are the "
                         f"same log: -o is the expert's translations, -a the ASR transcripts")
    # no output may name an input or the other output; -O naming -d replaces it (atomically, once read)
    inputs = [("-o/--output", args.output), ("-a/--audiotranscripts", args.audiotranscripts)]
    clashes = [("-O/--out-file", out_path, inputs),
               ("--missing-ids", args.missing_ids, [("-d/--dataset", args.dataset), *inputs,
                                                    ("-O/--out-file", out_path)])]
    for flag, path, others in clashes:
        for other_flag, other in others:
            if path and other and _same_file(path, other):
                raise InputError(f"{flag} {path}: the same file as {other_flag} {other}, which it would overwrite")
    for flag, path in (("-O/--out-file", out_path), ("--missing-ids", args.missing_ids)):
        if path and (os.path.isdir(path) or not os.path.isdir(os.path.dirname(os.path.abspath(path)))):
            raise InputError(f"{flag} {path}: is a directory, or its directory does not exist")
    required = ["id", args.tgt_column] + [j.column for j in jobs]
    if args.check_ref == "src":
        required.append(args.src_column)
    manifest = read_manifest(args.dataset, list(dict.fromkeys(required)))
    n_rows = len(manifest.rows)
    log(f"manifest {manifest.path}: {n_rows} rows, columns: {' '.join(manifest.header)}")

    parsed = []
    for job in jobs:
        entries = parse_generate_log(job.log, args.hyp_line)
        bad = [i for i in entries if i >= n_rows]
        if bad:
            i = min(bad)
            raise InputError(f"{job.log}:{entries[i].line}: sample id {i} out of range for {manifest.path} "
                             f"({n_rows} data rows, ids 0..{n_rows - 1}); log of a larger split?")
        if args.check_ref == "auto":
            columns = job.check_columns
        elif args.check_ref == "off":
            columns = ()
        else:
            columns = (args.tgt_column if args.check_ref == "tgt" else args.src_column,)
        result = check_references(job, entries, manifest, columns, args.check_ref != "auto",
                                  args.max_ref_mismatch, log)
        missing = [i for i in range(n_rows) if i not in entries]
        summary = f"{job.log} ({job.flag}, {args.hyp_line}- lines): {len(entries)} hypotheses"
        if result is not None:
            summary += (f"; reference check vs {result.column!r}: {result.matched} match, "
                        f"{result.mismatched} differ, {result.unverifiable} unverifiable")
        log(summary)
        if missing and not args.allow_missing:
            i = missing[0]
            raise InputError(f"{job.log}: no hypothesis for {len(missing)} of {n_rows} rows of {manifest.path} "
                             f"(first: id {i}, manifest id {manifest.rows[i][manifest.column('id')]!r}, line "
                             f"{manifest.line_numbers[i]}); truncated log or subset? (--allow-missing keeps "
                             f"the original text)")
        parsed.append((job, entries, missing))

    rows = [list(r) for r in manifest.rows]
    id_col = manifest.column("id")
    all_missing = set()
    stats = []
    field_limit = csv.field_size_limit()  # csv's default, which fairseq's manifest reader keeps
    for job, entries, missing in parsed:
        process = make_postprocessor(args.remove_bpe, args.detokenize, job.lang)
        col = manifest.column(job.column)
        longest, longest_id, empty, marker_seen = -1, None, 0, False
        for i, entry in entries.items():
            if args.remove_bpe in ("@@ ", "@@", "subword_nmt") and "@@" in entry.hyp:
                marker_seen = True
            elif args.remove_bpe == "sentencepiece" and "\u2581" in entry.hyp:
                marker_seen = True
            text = process(entry.hyp)
            if len(text) > field_limit:
                raise InputError(f"{job.log}:{entry.line}: hypothesis of id {i} has {len(text)} characters, more "
                                 f"than a manifest field may hold ({field_limit}: fairseq's csv reader could not "
                                 f"read it back)")
            rows[i][col] = text
            n_tok = len(text.split())
            empty += n_tok == 0
            if n_tok > longest:
                longest, longest_id = n_tok, i
        if args.remove_bpe in ("@@ ", "@@", "subword_nmt", "sentencepiece") and not marker_seen:
            log(f"warning: {job.log}: --remove-bpe {args.remove_bpe!r} found no BPE marker in any hypothesis "
                f"(already removed by fairseq-generate?)")
        if empty:
            log(f"warning: {job.log}: {empty} empty hypotheses")
        all_missing.update(missing)
        stats.append((job, len(entries), missing, longest, longest_id))

    write_manifest_atomic(out_path, manifest.header, rows, mode_from=manifest.path, log=log)
    if args.missing_ids:
        ids = [manifest.rows[i][id_col] for i in sorted(all_missing)]
        write_lines_atomic(args.missing_ids, ids, log=log)
    for job, n_replaced, missing, longest, longest_id in stats:
        log(f"{job.column}: replaced {n_replaced} of {n_rows} rows from {job.log}, missing {len(missing)}, "
            f"max hypothesis length {longest} tokens (sample id {longest_id})")
        if missing:
            shown = ", ".join(manifest.rows[i][id_col] for i in missing[:MAX_LISTED_IDS])
            more = f" (+{len(missing) - MAX_LISTED_IDS} more)" if len(missing) > MAX_LISTED_IDS else ""
            log(f"{job.column}: kept the original text of {len(missing)} rows, manifest ids: {shown}{more}")
    log(f"wrote {out_path} ({n_rows} rows)")
    return out_path


def write_lines_atomic(path: str, lines: Sequence[str], log: Optional[Callable[[str], None]] = None) -> None:
    """Write one string per line (the --missing-ids list), atomically like the manifest."""
    try:
        atomic.write_lines(path, lines, log=log)
    except OSError as e:
        raise InputError(f"--missing-ids {path}: cannot write: {_one_line(e)}") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 bad input) instead of raising."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _validate_args(parser, args)
    except SystemExit as e:  # --help (0) or a usage error (2, message already printed)
        return e.code if isinstance(e.code, int) else 2

    report: List[str] = []

    def log(message: str) -> None:
        """Warnings go to stderr at once; the report only once the output is written."""
        if message.startswith("warning:"):
            print(f"{PROG}: {message}", file=sys.stderr)
        else:
            report.append(f"[{PROG}] {message}")

    previous = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) is signal.SIG_DFL:  # keep e.g. nohup's ignored SIGHUP ignored
                previous[signum] = signal.signal(signum, _raise_interrupted)
    try:
        run(args, log)
    except InputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except (Interrupted, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        print(f"{PROG}: error: interrupted by {signal.Signals(signum).name}; temporary files removed",
              file=sys.stderr)
        return 128 + int(signum)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print("\n".join(report), file=sys.stderr)
    return 0


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


# --------------------------------------------------------------------------------------- helpers
def _same_file(a: str, b: str) -> bool:
    """True if paths ``a`` and ``b`` name one file (the same resolved path, or hard links to one file)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _short(text: Optional[str], limit: int = 80) -> str:
    text = "" if text is None else text
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


if __name__ == "__main__":
    sys.exit(main())
