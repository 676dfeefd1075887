"""Checks on an expert checkpoint: before its task and data are loaded, is it the kind of expert the
criterion needs (text or speech), and does its data directory hold the dictionaries a text expert loads?
Once loaded, is its target dictionary the student's? Each failure is one :class:`ImitKDError` line
naming the flag and file. (``check_dictionaries_fit`` also serves any checkpoint: ``imitkd.dictionary_fit``.)"""
import os
from typing import Optional

from fairseq.data import Dictionary

from .errors import ImitKDError

_SPEECH_MODEL_PACKAGES = ("fairseq.models.speech_to_text", "fairseq.models.speech_to_speech",
                          "fairseq.models.wav2vec", "fairseq.models.hubert")


def expert_kind(cfg) -> str:
    """What the checkpoint with stored config ``cfg`` reads, "speech" or "text": from its model class
    (the arch's package), else from its task name (a cascade text student of speech_to_text_kd: text)."""
    from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY

    arch = getattr(cfg.model, "arch", None) or getattr(cfg.model, "_name", None)
    model = ARCH_MODEL_REGISTRY.get(arch) or MODEL_REGISTRY.get(arch)
    if model is not None and model.__module__.startswith(_SPEECH_MODEL_PACKAGES):
        return "speech"
    task = str(getattr(cfg.task, "_name", None) or "")
    if ("speech" in task or "audio" in task) and not getattr(cfg.task, "student_src_column", None):
        return "speech"
    return "text"


def check_kind(cfg, expects: str, filename: str) -> None:
    """Fail (naming the criteria that fit) unless the checkpoint is the kind of expert ``expects`` names."""
    if expects not in ("text", "speech"):
        raise ValueError(f"expects must be 'text' or 'speech', got {expects!r}")
    kind = expert_kind(cfg)
    if kind == expects:
        return
    task = getattr(cfg.task, "_name", None)
    arch = getattr(cfg.model, "arch", None) or getattr(cfg.model, "_name", None)
    if kind == "speech":
        raise ImitKDError(
            f"--expert {filename} is a speech-to-text model (task {task}, arch {arch}): use --criterion "
            "imit_kd_ast or imit_kd_ast_pure_kd (the expert reads the same audio), or give a text NMT expert")
    raise ImitKDError(
        f"--expert {filename} is a text translation model (task {task}, arch {arch}): use --criterion "
        "imit_kd_CE, imit_kd or word_kd (the expert reads the transcript), or give a speech-to-text expert")


def check_translation_dicts(cfg, data_dir: Optional[str], filename: str, given=(None, None)):
    """The translation task of a text expert loads ``dict.<src>.txt``/``dict.<tgt>.txt`` from its data
    directory (``--path``, else the stored one); fail with one line naming what is missing there (a side
    whose dictionary ``given`` names, --expert-vocab-src/-tgt, needs none there).
    Returns the (source, target) languages: recorded in ``cfg``, else inferred from the binarized files."""
    from fairseq.data.data_utils import infer_language_pair

    stored = getattr(cfg.task, "data", None)
    where = f"--path {data_dir}" if data_dir else f"the data directory stored in --expert {filename}, {stored},"
    data = (data_dir or stored or "").split(os.pathsep)[0]
    if not os.path.isdir(data):
        raise ImitKDError(f"{where} is not a directory; point --path at the text expert's data directory "
                          "(fairseq-preprocess --destdir)")
    src, tgt = cfg.task.source_lang, cfg.task.target_lang
    for candidate in (data, stored):  # languages not recorded: fairseq infers them from the binarized files
        if (src is None or tgt is None) and candidate and os.path.isdir(candidate):
            src, tgt = infer_language_pair(candidate)
    fix = "point --path at the expert's fairseq-preprocess --destdir, or pass --expert-vocab-src/--expert-vocab-tgt"
    if src is None or tgt is None:
        raise ImitKDError(
            f"{where} has neither the text expert's dictionaries dict.<src>.txt/dict.<tgt>.txt nor binarized "
            f"data telling its languages ({filename} does not record them); {fix}")
    missing = [f"dict.{lang}.txt" for lang, file in zip((src, tgt), given)
               if not file and not os.path.isfile(os.path.join(data, f"dict.{lang}.txt"))]
    if missing:
        raise ImitKDError(f"{where} lacks the text expert's dictionaries {' and '.join(dict.fromkeys(missing))} "
                          f"({src}→{tgt}); {fix}")
    return src, tgt


def text_expert_dictionaries(cfg, data_dir: Optional[str], vocab_src: Optional[str], vocab_tgt: Optional[str],
                             filename: str):
    """The (flag, file) of a text expert's source and target dictionary: --expert-vocab-src/-tgt where given,
    else ``dict.<lang>.txt`` of its data directory (``--path``, else the one stored in the checkpoint), the
    languages as ``check_translation_dicts`` finds them. Returns (source language, target language, [(flag,
    file), (flag, file)])."""
    given = (vocab_src, vocab_tgt)
    src, tgt = cfg.task.source_lang, cfg.task.target_lang
    if not all(given):
        src, tgt = check_translation_dicts(cfg, data_dir, filename, given)
    data = (data_dir or getattr(cfg.task, "data", None) or "").split(os.pathsep)[0]
    where = "--path" if data_dir else f"--expert {filename} (its stored data directory)"
    return src, tgt, [(flag, file) if file else (where, os.path.join(data, f"dict.{lang}.txt"))
                      for flag, file, lang in (("--expert-vocab-src", vocab_src, src),
                                               ("--expert-vocab-tgt", vocab_tgt, tgt))]


_EXPERT_FIX = "give the dictionaries the expert was trained with (fairseq-preprocess --destdir)"


def embedding_rows(state) -> dict:
    """{"source"/"target": vocabulary size} of a model's state (its token embeddings; a speech encoder has none)."""
    weights = state.get("model") or {}
    return {side: weights[key].shape[0] for side, key in (("source", "encoder.embed_tokens.weight"),
                                                          ("target", "decoder.embed_tokens.weight"))
            if key in weights and hasattr(weights[key], "shape")}


def check_dictionaries_fit(cfg, rows: dict, files, dicts, filename: str, model: str = "the expert",
                           fix: str = _EXPERT_FIX) -> None:
    """Fail unless the source/target dictionaries (``files``: their (flag or None, path); a side without
    a dictionary is None in ``dicts``) have the sizes of the checkpoint's embeddings (``rows``:
    ``embedding_rows``) and, where it shares all embeddings, are one. ``model`` names the checkpoint's role
    in the message, ``fix`` says what to do."""
    for side, (flag, path), dictionary in zip(("source", "target"), files, dicts):
        if dictionary is not None and side in rows and rows[side] != len(dictionary):
            where = f"{flag}: {path}" if flag else path
            raise ImitKDError(f"{where} has {len(dictionary)} symbols, but {model} {filename} has {rows[side]} "
                              f"{side} embeddings: {fix}")
    if (getattr(cfg.model, "share_all_embeddings", False) and all(d is not None for d in dicts)
            and dicts[0].symbols != dicts[1].symbols):
        (sflag, spath), (tflag, tpath) = files
        names = (f"{sflag + ': ' if sflag else ''}{spath} and {tpath}" if sflag == tflag
                 else f"{sflag} {spath} and {tflag} {tpath}")
        raise ImitKDError(
            f"{names} differ, but {model} {filename} shares all embeddings "
            "(--share-all-embeddings): its source and target dictionary are one joined dictionary")


def check_same_dictionary(student: Dictionary, expert: Dictionary, expert_desc: str) -> None:
    """Fail unless the two target dictionaries have the same symbols in the same order."""
    if student.symbols == expert.symbols:
        return
    first = next((i for i, (a, b) in enumerate(zip(student.symbols, expert.symbols)) if a != b),
                 min(len(student), len(expert)))
    s = student.symbols[first] if first < len(student) else "<end>"
    e = expert.symbols[first] if first < len(expert) else "<end>"
    raise ImitKDError(
        f"the student's target dictionary ({len(student)} symbols, from the data config's vocab_filename) "
        f"differs from the expert's ({len(expert)} symbols, {expert_desc}) at index {first} ({s!r} vs {e!r}); "
        "train the student on the expert's target dictionary and BPE"
    )
