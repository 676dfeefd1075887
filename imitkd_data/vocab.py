"""The target vocabulary: a sentencepiece model with fairseq's special ids and its fairseq dictionary.

``setup_vocab`` trains one on the train targets (``spm_<type><size>.model`` + ``.txt``) or copies in an
existing dictionary / model (``--vocab-from-dict`` / ``--bpe-from``: a student shares the expert's vocabulary).
"""
import logging
import re
import shutil
from pathlib import Path
from typing import Iterable, Optional, Sequence, Tuple

from . import atomic
from .errors import DataPrepError
from .manifest import clean_text

logger = logging.getLogger("prep_s2t_data")

# fairseq's special symbols: bos, pad, eos, unk at ids 0..3
SPECIAL_PIECES = ("<s>", "<pad>", "</s>", "<unk>")


def check_vocab_size(vocab_size, flag: str = "--vocab-size") -> None:
    """A sentencepiece size must leave room for more than the special pieces (sentencepiece's own limit,
    the text's characters, is checked when training: ``train_spm``)."""
    if not isinstance(vocab_size, int) or vocab_size <= len(SPECIAL_PIECES):
        raise DataPrepError(f"{flag} must be an integer > {len(SPECIAL_PIECES)} (the special symbols "
                            f"{' '.join(SPECIAL_PIECES)} come first), got {vocab_size!r}")


def check_spm_model(path: Path, flag: str = "--bpe-from") -> None:
    """``path`` is a sentencepiece model with fairseq's special ids 0-3 (before any work is done with it)."""
    import sentencepiece as spm

    if not Path(path).is_file():
        raise DataPrepError(f"{flag}: sentencepiece model not found: {path}")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as e:
        raise DataPrepError(f"{flag} {path}: not a sentencepiece model ({' '.join(str(e).split())})") from None
    _check_special_pieces(sp, path)


def _check_special_pieces(sp, spm_model: Path) -> None:
    pieces = [sp.id_to_piece(i) for i in range(min(4, sp.get_piece_size()))]
    if tuple(pieces) != SPECIAL_PIECES:
        raise DataPrepError(f"{spm_model}: ids 0-3 are {pieces}, expected {list(SPECIAL_PIECES)} (fairseq convention)")


def train_spm(texts: Iterable[str], model_prefix: Path, model_type: str = "unigram", vocab_size: int = 8000,
              flag: str = "--vocab-size") -> Path:
    """Train sentencepiece with fairseq's special ids (bos 0, pad 1, eos 2, unk 3); returns the .model path.
    A ``vocab_size`` (the CLI's ``flag``) too small for the text's characters raises DataPrepError."""
    import sentencepiece as spm

    check_vocab_size(vocab_size, flag)
    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    # a fixed input path (the model records it), so that the same text gives a byte-identical model
    inp = model_prefix.with_name(model_prefix.name + ".input.txt")
    try:
        n = 0
        with open(inp, "w", encoding="utf-8") as f:
            for t in texts:
                t = clean_text(t)
                if t:
                    f.write(t + "\n")
                    n += 1
        if n == 0:
            raise DataPrepError("no text to train the sentencepiece model on")
        spm.SentencePieceTrainer.train(
            input=str(inp),
            model_prefix=str(model_prefix),
            model_type=model_type,
            vocab_size=vocab_size,
            character_coverage=1.0,
            num_threads=1,  # deterministic
            bos_id=0,
            pad_id=1,
            eos_id=2,
            unk_id=3,
            hard_vocab_limit=False,  # small corpora: a smaller vocabulary instead of an error
            minloglevel=2,
        )
    except RuntimeError as e:
        # "... Vocabulary size is smaller than required_chars. 10 vs 18. Increase vocab_size ..."
        m = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(e))
        if m is None:
            raise
        raise DataPrepError(f"{flag} {vocab_size} is too small for the training text: sentencepiece needs at least "
                            f"{m.group(1)} (its characters and the {len(SPECIAL_PIECES)} special symbols)") from None
    finally:
        inp.unlink(missing_ok=True)
    return model_prefix.with_suffix(".model")


def write_fairseq_dict(spm_model: Path, dict_path: Path) -> int:
    """fairseq dictionary of a sentencepiece model: every piece but ids 0-3 as ``<piece> 1``; returns #pieces."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    _check_special_pieces(sp, spm_model)
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    atomic.write_lines(dict_path, [f"{piece} 1" for piece in pieces[4:]])
    return len(pieces) - 4


def _copy_in(src, out_dir: Path, what: str) -> Path:
    """``src`` copied into ``out_dir`` (unless it is already there); fails naming ``what`` if it is missing."""
    src = Path(src)
    if not src.is_file():
        raise DataPrepError(f"{what} not found: {src}")
    dst = out_dir / src.name
    if src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)
    return dst


def setup_vocab(
    out_dir: Path,
    train_targets: Sequence[str],
    vocab_type: str = "unigram",
    vocab_size: int = 8000,
    vocab_from_dict: Optional[Path] = None,
    bpe_from: Optional[Path] = None,
) -> Tuple[str, Optional[Path]]:
    """Train (or copy in) the target vocabulary; returns (vocab_filename relative to out_dir, spm model path)."""
    out_dir = Path(out_dir)
    spm_model = None
    if bpe_from is not None:
        spm_model = _copy_in(bpe_from, out_dir, "--bpe-from: sentencepiece model")
    if vocab_from_dict is not None:
        dict_path = _copy_in(vocab_from_dict, out_dir, "--vocab-from-dict: dictionary")
        if spm_model is None:
            logger.warning("--vocab-from-dict without --bpe-from: config.yaml gets no bpe_tokenizer (targets used as is)")
        return dict_path.name, spm_model
    if spm_model is None:
        if not train_targets:
            raise DataPrepError("no train split to learn the vocabulary from (name one with --vocab-splits or reuse one)")
        spm_model = train_spm(train_targets, out_dir / f"spm_{vocab_type}{vocab_size}", model_type=vocab_type,
                              vocab_size=vocab_size)
    dict_path = spm_model.with_suffix(".txt")
    write_fairseq_dict(spm_model, dict_path)
    return dict_path.name, spm_model
