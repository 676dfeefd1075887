"""Text → token ids for the batch's text inputs (``imitkd.data.TextInputDataset``): the expert's
source (``sample["expert_input"]``), a text student's source and the CTC transcript.

:class:`SourceEncoder` is what fairseq-interactive does to a line before the model reads it:
pre-tokenizer (e.g. moses) → BPE (sentencepiece, subword_nmt, fastbpe) → dictionary, ``</s>``
appended. ``SourceEncoder.build`` makes the expert's from its flags (``--expert-tokenizer``,
``--expert-bpe``, ``--bpe-codes``, ``--expert-sentencepiece-model``), falling back to what the expert
checkpoint recorded.
"""
import os
from argparse import Namespace

from torch import Tensor

from fairseq.data import Dictionary, encoders

from .errors import ImitKDError


def load_dictionary(path, flag: str) -> Dictionary:
    """fairseq's ``Dictionary.load(path)``; a file that is missing, not a dictionary, or holds no symbols
    beyond the specials is one ImitKDError line naming ``flag`` and the file."""
    if os.path.isdir(path):
        raise ImitKDError(f"{flag}: {path} is a directory, not a dictionary file")
    if not os.path.isfile(path):
        raise ImitKDError(f"{flag}: dictionary not found: {path}")
    try:
        dictionary = Dictionary.load(str(path))
    except OSError as e:
        raise ImitKDError(f"{flag}: {path}: {e.strerror or e}") from None
    except Exception as e:  # ValueError: a line without a count; RuntimeError: a duplicate; Exception: not UTF-8
        where = f"{path}:{_bad_line(path)}" if isinstance(e, ValueError) else path
        reason = str(e).replace("\n", "").strip()  # (fairseq quotes the bad line with its newline)
        raise ImitKDError(f"{flag}: {where} is not a fairseq dictionary ({reason})") from None
    if len(dictionary) <= dictionary.nspecial:
        raise ImitKDError(f"{flag}: {path} is an empty dictionary (no symbols besides the special ones)")
    return dictionary


def _bad_line(path) -> str:
    """The number of the first line of a dictionary file that is not ``<token> <count> [flags]``."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            fields = line.rstrip().split(" ")
            if fields[-1] == "#fairseq:overwrite":
                fields = fields[:-1]
            if len(fields) < 2 or not fields[-1].lstrip("-").isdigit():
                return str(number)
    return "?"


class SourceEncoder:
    """Text → source token ids (1-D long, ``</s>`` last): tokenizer (e.g. moses) → BPE (sentencepiece,
    subword_nmt, fastbpe) → dictionary, exactly what fairseq-interactive feeds the model.
    A symbol not in ``dictionary`` becomes ``<unk>``."""

    def __init__(self, dictionary: Dictionary, tokenizer=None, bpe=None):
        self.dictionary, self.tokenizer, self.bpe = dictionary, tokenizer, bpe

    def encode(self, text: str) -> Tensor:
        if self.tokenizer is not None:
            text = self.tokenizer.encode(text)
        if self.bpe is not None:
            text = self.bpe.encode(text)
        return self.dictionary.encode_line(text, add_if_not_exist=False, append_eos=True).long()

    @classmethod
    def build(cls, dictionary, stored_cfg=None, tokenizer=None, bpe=None, bpe_codes=None,
              sentencepiece_model=None, source_lang="en"):
        """Flags win over what the expert checkpoint recorded (its ``--tokenizer``/``--bpe``)."""
        tok = bpe_obj = None
        stored_tok = getattr(stored_cfg, "tokenizer", None) if stored_cfg is not None else None
        stored_bpe = getattr(stored_cfg, "bpe", None) if stored_cfg is not None else None
        if tokenizer is None and stored_tok is not None:
            tok = encoders.build_tokenizer(stored_tok)
        elif tokenizer not in (None, "none"):
            tok = encoders.build_tokenizer(Namespace(tokenizer=tokenizer, source_lang=source_lang,
                                                     target_lang=source_lang, moses_no_dash_splits=False,
                                                     moses_no_escape=False))
        if bpe is None and bpe_codes:
            bpe = "subword_nmt"
        if bpe is None and sentencepiece_model:
            bpe = "sentencepiece"
        if bpe is None and stored_bpe is not None:
            bpe_obj = encoders.build_bpe(stored_bpe)
        elif bpe not in (None, "none"):
            for flag, value, needed_by in (("--bpe-codes", bpe_codes, ("subword_nmt", "fastbpe")),
                                           ("--expert-sentencepiece-model", sentencepiece_model, ("sentencepiece",))):
                if bpe in needed_by and (not value or not os.path.isfile(value)):
                    raise ImitKDError(f"--expert-bpe {bpe} needs {flag} FILE (got {value!r})")
            flag, value = {"sentencepiece": ("--expert-sentencepiece-model", sentencepiece_model),
                           "subword_nmt": ("--bpe-codes", bpe_codes),
                           "fastbpe": ("--bpe-codes", bpe_codes)}.get(bpe, ("--expert-bpe", bpe))
            try:
                bpe_obj = encoders.build_bpe(Namespace(bpe=bpe, bpe_codes=bpe_codes, bpe_separator="@@",
                                                       sentencepiece_model=sentencepiece_model,
                                                       sentencepiece_enable_sampling=False,
                                                       sentencepiece_alpha=None))
            except Exception as e:  # e.g. sentencepiece: "could not parse ModelProto from dict.txt"
                what = {"--expert-sentencepiece-model": "a sentencepiece model",
                        "--bpe-codes": f"{bpe} BPE codes"}.get(flag, "a usable BPE")
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise ImitKDError(f"{flag} {value}: not {what} ({reason})") from None
        return cls(dictionary, tok, bpe_obj)
