"""The frozen expert: one fairseq checkpoint, or an ensemble averaging probabilities.

The expert is deliberately *not* an ``nn.Module`` attribute of the criterion: it never enters the
optimizer, the checkpoint, ``criterion.train()`` or ``criterion.half()``. Its parameters have
``requires_grad=False``, its models stay in ``eval()`` (no dropout while the student trains), and
it follows the student to its device on first use, in the precision ``--expert-dtype`` names there
(``auto``: bf16 where the hardware has native bf16 matrix products, see ``imitkd.precision``).
"""
import logging
import math
import os
from typing import List, Optional

import torch
from torch import Tensor

from fairseq import checkpoint_utils
from fairseq.data import Dictionary
from fairseq.models.transformer import TransformerDecoderBase

from . import precision
from .errors import ImitKDError
from .expert_checks import check_dictionaries_fit, check_kind, embedding_rows, text_expert_dictionaries
from .text_encoding import load_dictionary

logger = logging.getLogger(__name__)


class Expert:
    """Frozen fairseq model(s) giving next-token scores for a prefix.

    ``scores(src_tokens, src_lengths, prev_output_tokens)`` returns B×T×V scores whose softmax is the
    expert's next-token distribution at each prefix position (raw logits for one model, log of the
    averaged probabilities for an ensemble).
    """

    def __init__(self, models: List[torch.nn.Module], task, dtype: str = "auto", description: str = "expert"):
        if dtype not in precision.CHOICES:
            raise ImitKDError(f"--expert-dtype must be one of {', '.join(precision.CHOICES)}, got {dtype!r}")
        self.models, self.task, self.description = models, task, description
        self.dtype_flag = dtype
        self.dtype = torch.float32  # until it is moved to its device (``to``)
        self.int8 = False  # linear layers quantised to int8 (``to``, where the flag means it)
        for m in self.models:
            m.requires_grad_(False)
            m.eval()
            _contiguous_layer_inputs(m)
        self._device = None

    @classmethod
    def from_checkpoints(cls, paths: str, data_dir: Optional[str] = None, vocab_src: Optional[str] = None,
                         vocab_tgt: Optional[str] = None, dtype: str = "auto", expects: Optional[str] = None):
        """Load ``paths`` (``:``-separated for an ensemble). ``data_dir`` (the seed's ``--path``) is
        where the expert's task finds its dictionaries/config; ``vocab_src``/``vocab_tgt`` override
        the dictionaries of a text (translation) expert. ``expects`` ("text" or "speech"; None: no check)
        is the kind of expert the criterion needs: every checkpoint's stored task/arch must match,
        checked before its task or data are loaded. A text expert's dictionaries must fit every checkpoint."""
        filenames = [p for p in (paths or "").split(os.pathsep) if p]
        if not filenames:
            raise ImitKDError("--expert is required: path of the expert checkpoint (':'-separated for an ensemble)")
        for f in filenames:
            if os.path.isdir(f):
                raise ImitKDError(f"--expert: {f} is a directory, not a checkpoint file")
            if not os.path.isfile(f):
                raise ImitKDError(f"--expert: checkpoint not found: {f}")
        overrides = {"data": data_dir} if data_dir else {}
        state = checkpoint_utils.load_checkpoint_to_cpu(filenames[0])  # as stored: no --path override yet
        cfg = state["cfg"]
        members = [(filenames[0], cfg, embedding_rows(state))]  # every member's kind and vocabulary sizes
        del state
        for f in filenames[1:]:
            member = checkpoint_utils.load_checkpoint_to_cpu(f)
            members.append((f, member["cfg"], embedding_rows(member)))
            del member
        if expects is not None:
            for f, member_cfg, _ in members:
                check_kind(member_cfg, expects, f)
        translation = getattr(cfg.task, "_name", None) == "translation"
        if (vocab_src or vocab_tgt) and not translation:
            raise ImitKDError(f"--expert-vocab-src/--expert-vocab-tgt apply to translation experts; {filenames[0]} "
                              f"has task {cfg.task._name}")
        stored = getattr(cfg.task, "data", None)
        if not (data_dir or vocab_src and vocab_tgt) and stored and not os.path.isdir(stored):
            raise ImitKDError(
                f"--expert {filenames[0]}: its data directory {stored} (dictionaries, config) does not exist "
                "here; pass --path DIR, or --expert-vocab-src/--expert-vocab-tgt")
        task = None
        if translation:  # its dictionaries, checked against every member's embeddings before fairseq loads them
            src, tgt, files = text_expert_dictionaries(cfg, data_dir, vocab_src, vocab_tgt, filenames[0])
            dicts = [load_dictionary(path, flag) for flag, path in files]
            for f, member_cfg, rows in members:
                check_dictionaries_fit(member_cfg, rows, files, dicts, f)
            if vocab_src or vocab_tgt:
                from fairseq.tasks.translation import TranslationTask

                task = TranslationTask(cfg.task, *dicts)
            elif cfg.task.source_lang is None or cfg.task.target_lang is None:
                overrides.update(source_lang=src, target_lang=tgt)  # found in the stored directory
        try:
            models, _, task = checkpoint_utils.load_model_ensemble_and_task(
                filenames, arg_overrides=overrides or None, task=task)
        except FileNotFoundError as e:
            raise ImitKDError(f"--expert {paths}: {e} (set --path to the expert's data directory)") from None
        desc = f"expert {':'.join(filenames)}"
        return cls(models, task, dtype=dtype, description=desc), cfg

    @property
    def source_dictionary(self) -> Optional[Dictionary]:
        return self.task.source_dictionary

    @property
    def target_dictionary(self) -> Dictionary:
        return self.task.target_dictionary

    def to(self, device: torch.device) -> "Expert":
        if self._device != device:
            if self.int8:
                raise ImitKDError(f"{self.description}: its int8 layers stay on {self._device}, cannot move to {device}")
            self.dtype = precision.resolve(self.dtype_flag, device)
            self.int8 = precision.int8(self.dtype_flag, device)
            for m in self.models:
                m.to(device=device, dtype=self.dtype)
                if self.int8:  # frozen: quantised once, one scale per output channel
                    precision.Int8Weights(m, per_channel=True).install(m)
            self._device = device
            logger.info(f"{self.description} runs on {device} in {precision.describe(self.dtype_flag, device)} "
                        f"(--expert-dtype {self.dtype_flag})")
        return self

    @torch.no_grad()
    def scores(self, src_tokens: Tensor, src_lengths: Tensor, prev_output_tokens: Tensor) -> Tensor:
        """B×T×V next-token scores (softmax = the expert's distribution), in the expert's dtype
        (``--expert-dtype``; an autocast region around the call does not change it).

        Runs under ``no_grad`` (not ``inference_mode``: the result is saved for the student's backward).
        """
        self.to(prev_output_tokens.device)
        if src_tokens.is_floating_point():
            src_tokens = src_tokens.to(self.dtype)
        outs = []
        for m in self.models:
            if m.training:  # never let a parent's .train() switch on dropout
                m.eval()
            with precision.autocast(prev_output_tokens.device, None):  # its own precision, not the caller's
                outs.append(_logits(m, src_tokens, src_lengths, prev_output_tokens))
        if len(outs) == 1:
            return outs[0]
        lprobs = torch.stack([torch.log_softmax(o.float(), dim=-1) for o in outs])
        return (torch.logsumexp(lprobs, dim=0) - math.log(len(outs))).to(outs[0].dtype)


def _logits(model, src_tokens: Tensor, src_lengths: Tensor, prev_output_tokens: Tensor) -> Tensor:
    """``model(src_tokens, src_lengths, prev_output_tokens)[0]`` (B×T×V), computed faster for fairseq
    transformer decoders: the output projection gets a contiguous B×T×C input (fairseq hands it a
    transposed view, which makes it a batched product over a copy of the V×C weight per sentence, a
    large part of a bf16 expert forward on a CPU: benchmarks/README.md) and the encoder keeps no
    per-layer states."""
    decoder, encoder = getattr(model, "decoder", None), getattr(model, "encoder", None)
    if not isinstance(decoder, TransformerDecoderBase) or encoder is None:
        return model(src_tokens, src_lengths, prev_output_tokens)[0]
    encoder_out = encoder(src_tokens, src_lengths=src_lengths)
    features, _ = decoder.extract_features(prev_output_tokens, encoder_out=encoder_out)
    return decoder.output_layer(features.contiguous())


def _contiguous_layer_inputs(model) -> None:
    """Hand every encoder/decoder layer a contiguous input. fairseq's transformers feed their first
    layer a transposed (B×T×C → T×B×C) view; its attention projections then run as a batched product
    over a per-time-step copy of each weight, a sizeable part of a bf16 expert forward on a CPU
    (benchmarks/README.md). Same values up to the dtype's rounding."""
    for part in (getattr(model, "encoder", None), getattr(model, "decoder", None)):
        layers = getattr(part, "layers", None)
        if isinstance(layers, torch.nn.ModuleList):
            for layer in layers:
                layer.register_forward_pre_hook(_make_first_argument_contiguous)


def _make_first_argument_contiguous(module, args):
    if args and torch.is_tensor(args[0]) and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None
