"""Student rollouts and the mixing of gold and rollout prefixes.

``student_rollout`` decodes greedily (or by top-k sampling) one token at a time over cached
keys/values (``imitkd.cached_decoder``; fairseq's incremental decoding for decoders it does not
cover), under ``no_grad`` with the student in ``eval()`` (restored afterwards), for the
rows it is given only. In fp32, greedy output equals fairseq's ``SequenceGenerator`` with beam 1 (same
``min_len=1`` rule: no EOS at the first step; pad never chosen; EOS forced at the length cap);
the encoder pass and the decoding can each run under autocast (``encoder_dtype``/``decoder_dtype``,
chosen by the criterion's ``--rollout-dtype``, see ``imitkd.precision``). Rows
that have finished are dropped from the decoder batch as they accumulate, and decoding stops as soon
as every row has finished.
"""
import contextlib
import functools
import logging
import math
from typing import Optional

import torch
from fairseq import utils
from torch import Tensor

from . import cached_decoder, precision
from .precision import autocast

logger = logging.getLogger(__name__)

#: ``--rollout-decoding`` choices (see ``student_rollout``)
DECODINGS = ("cached", "cuda-graph", "fairseq")


def length_caps(target_lengths: Tensor, a: float, b: int) -> Tensor:
    """Per-sentence cap on rollout tokens (EOS excluded): floor(a · gold_len + b), gold_len counting EOS."""
    return (target_lengths.float() * a + b).floor().long().clamp_(min=1)


def length_cap_problem(a: float, b: int) -> Optional[str]:
    """What is wrong with the cap ``a · gold_len + b`` (a negative term, or both 0); None if nothing."""
    if not (0 <= a < math.inf and 0 <= b < math.inf and a + b > 0):  # (so that NaN fails too)
        return f"--rollout-max-len-a/--rollout-max-len-b must be >= 0, finite and not both 0, got {a} / {b}"
    return None


@torch.no_grad()
def student_rollout(
    model,
    src_tokens: Tensor,
    src_lengths: Tensor,
    max_len: Tensor,
    eos: int,
    pad: int,
    sample: bool = False,
    topk: int = 0,
    temperature: float = 1.0,
    min_len: int = 1,
    sync_every: Optional[int] = None,
    compact_frac: float = 0.25,
    encoder_dtype: Optional[torch.dtype] = None,
    decoder_dtype: Optional[torch.dtype] = None,
    decoding: str = "cached",
    int8: bool = False,
    encoder_out: Optional[dict] = None,
) -> Tensor:
    """Decode the student's own translations.

    Args:
        model: fairseq encoder-decoder model (e.g. ``S2TTransformerModel``); may be wrapped.
        src_tokens, src_lengths: the encoder input of the rows to roll out (B′ rows).
        max_len: B′ per-row caps on the number of non-EOS tokens; EOS is forced after the cap.
        sample: top-k sampling with ``temperature`` instead of greedy argmax (``topk`` 0 = full vocab).
        sync_every: look at the finished rows every N steps (a host sync); default 1 on CPU, 8 on GPU.
        compact_frac: when at least this fraction of the rows still being decoded has finished, drop
            them from the batch (the encoder output and the cached keys/values are re-indexed, as in
            fairseq's ``SequenceGenerator``); 0 = at every check, ≥ 1 = never.
        encoder_dtype, decoder_dtype: autocast dtypes of the encoder pass and of the decoding
            (None: the model's own precision, also inside a caller's autocast region); the encoder
            output is cast back to the model's dtype when the decoding does not run under the same
            autocast.
        decoding: ``cached`` (``imitkd.cached_decoder``: preallocated key/value cache, one-token steps),
            ``cuda-graph`` (the same, replayed as one CUDA graph per step on GPUs; ``cached`` elsewhere)
            or ``fairseq`` (the decoder's own incremental decoding). Decoders that ``cached`` does not
            cover use fairseq's.
        int8: the decoding multiplies by int8 copies of the decoder's current weights where that pays
            (``cached_decoder.int8_linears``: FFNs, output projection, encoder keys/values), quantised at
            every call (CPUs; activations stay fp32). The encoder pass stays as it is: its int8 copy,
            made anew for every rollout, would cost about what it saves.
        encoder_out: the encoder output of these rows, computed elsewhere (``reorder_encoder_out``; e.g.
            the training forward's); None: an eval-mode encoder pass here.

    Returns B′×L long tensor: tokens ``y1 … yk </s>`` per row, right-padded with ``pad``.
    """
    was_training = model.training
    model.eval()
    try:
        encoder, decoder = model.encoder, model.decoder
        if src_tokens.dim() == 3:  # features B′×T×C: drop the padding the selected rows no longer need
            src_tokens = src_tokens[:, : int(src_lengths.max())]
        n, device = src_tokens.size(0), src_tokens.device
        int8 = int8 and next(decoder.parameters()).dtype == torch.float32  # (int8 products take fp32 inputs)
        if encoder_out is None:
            with autocast(device, encoder_dtype):
                encoder_out = encoder(src_tokens, src_lengths=src_lengths)
        if encoder_dtype is not None and decoder_dtype != encoder_dtype:  # back to the decoder's dtype
            dtype = next(decoder.parameters()).dtype
            encoder_out = utils.apply_to_sample(lambda t: t.to(dtype) if t.is_floating_point() else t, encoder_out)
        steps = int(max_len.max()) + 1
        sync_every = sync_every or (1 if device.type == "cpu" else 8)
        out = torch.full((n, steps + 1), pad, dtype=torch.long, device=device)  # all rows, in input order
        out[:, 0] = eos
        tokens = out  # the rows still decoded (a compacted copy once rows were dropped)
        rows = None  # their indices into ``out`` (None: all, in order)
        caps = max_len.to(device)
        finished = torch.zeros(n, dtype=torch.bool, device=device)
        step = 0
        with autocast(device, decoder_dtype):
            stepper = _decoder_steps(model, encoder_out, steps, decoding, decoder_dtype, int8)
            for step in range(steps):
                logits = stepper(tokens[:, : step + 1], step)
                logits[:, pad] = -torch.inf
                if step < min_len:
                    logits[:, eos] = -torch.inf
                if sample:
                    logits = logits / temperature
                    if 0 < topk < logits.size(-1):
                        kth = logits.topk(topk, dim=-1).values[:, -1:]
                        logits = logits.masked_fill(logits < kth, -torch.inf)
                    next_tokens = torch.multinomial(torch.softmax(logits, dim=-1), 1).squeeze(1)
                else:
                    next_tokens = logits.argmax(dim=-1)
                next_tokens = torch.where(caps <= step, torch.full_like(next_tokens, eos), next_tokens)
                next_tokens = next_tokens.masked_fill(finished, pad)
                tokens[:, step + 1] = next_tokens
                if rows is not None:
                    out[rows, step + 1] = next_tokens
                finished |= next_tokens.eq(eos)
                if (step + 1) % sync_every == 0 and step + 1 < steps:
                    n_done, n_left = int(finished.sum()), finished.numel()
                    if n_done == n_left:
                        break
                    if stepper.can_reorder and n_done > 0 and n_done >= compact_frac * n_left:
                        keep = (~finished).nonzero().squeeze(1)
                        rows = keep if rows is None else rows[keep]
                        tokens, caps, finished = tokens[keep], caps[keep], finished[keep]
                        stepper.reorder(keep)
        out = out[:, 1 : step + 2]
        width = int(out.ne(pad).sum(1).max())
        return out[:, :width]
    finally:
        model.train(was_training)


class _FairseqSteps:
    """fairseq's own incremental decoding (``incremental_state``)."""

    def __init__(self, model, encoder_out, int8: bool = False):
        self.encoder, self.decoder, self.encoder_out, self.state = model.encoder, model.decoder, encoder_out, {}
        self.int8 = precision.Int8Weights(self.decoder, linears=cached_decoder.int8_linears(self.decoder)) if int8 else None
        self.can_reorder = (hasattr(self.encoder, "reorder_encoder_out")
                            and hasattr(self.decoder, "reorder_incremental_state_scripting"))

    def __call__(self, prefix: Tensor, step: int) -> Tensor:
        with contextlib.nullcontext() if self.int8 is None else self.int8.swapped_in(self.decoder):
            out = self.decoder(prefix, encoder_out=self.encoder_out, incremental_state=self.state)
        return out[0][:, -1, :].float()

    def reorder(self, rows: Tensor) -> None:
        self.encoder_out = self.encoder.reorder_encoder_out(self.encoder_out, rows)
        self.decoder.reorder_incremental_state_scripting(self.state, rows)


class _NewestTokenSteps:
    """Steps fed the newest token only: ``CachedDecoder.step`` (with its ``reorder``: rows can be
    dropped) or a ``GraphedStep`` (static shapes: they cannot)."""

    def __init__(self, step, reorder=None):
        self.step, self.reorder, self.can_reorder = step, reorder, reorder is not None

    def __call__(self, prefix: Tensor, step: int) -> Tensor:
        return self.step(prefix[:, step], step)


@functools.lru_cache(maxsize=None)
def _log_fallback(reason: str) -> None:
    logger.info(f"rollouts use fairseq's incremental decoding: {reason}")


def _decoder_steps(model, encoder_out, steps: int, decoding: str, autocast_dtype: Optional[torch.dtype],
                   int8: bool = False):
    """The per-step logits function of ``decoding`` (see ``student_rollout``), called as
    ``(prefix B×(t+1), t) → B×V`` fp32 logits, with ``can_reorder``/``reorder(rows)``."""
    if decoding not in DECODINGS:
        raise ValueError(f"unknown rollout decoding {decoding!r}")
    if decoding != "fairseq":
        reason = cached_decoder.unsupported(model.decoder)
        if reason is None:
            device = encoder_out["encoder_out"][0].device
            if decoding == "cuda-graph" and device.type == "cuda":
                cached = cached_decoder.CachedDecoder(model.decoder, encoder_out, steps, static_shapes=True)
                return _NewestTokenSteps(cached_decoder.GraphedStep(cached, autocast_dtype))
            cached = cached_decoder.CachedDecoder(model.decoder, encoder_out, steps, int8=int8)
            return _NewestTokenSteps(cached.step, cached.reorder)
        _log_fallback(reason)
    return _FairseqSteps(model, encoder_out, int8)


def reorder_encoder_out(model, encoder_out: dict, rows: Tensor) -> dict:
    """The ``rows`` of a fairseq encoder output, detached (e.g. the training forward's, for rollouts)."""
    detached = utils.apply_to_sample(lambda t: t.detach(), encoder_out)
    return model.encoder.reorder_encoder_out(detached, rows)


def mix_prefixes(gold_prev: Tensor, rollouts: Tensor, rows: Tensor, eos: int, pad: int) -> Tensor:
    """Decoder inputs where ``rows`` use the student's rollout instead of the gold prefix.

    Args:
        gold_prev: B×Tg gold ``prev_output_tokens`` (``</s> y1 … y_{n−1}``, right-padded).
        rollouts: B′×Tr rollout tokens (``ŷ1 … ŷk </s>``, right-padded), one per entry of ``rows``.
        rows: B′ row indices into the batch.

    Returns B×T decoder inputs: rollout rows become ``</s> ŷ1 … ŷk`` (EOS moved to the front exactly
    as in fairseq's ``prev_output_tokens``), gold rows are unchanged; T = longest row.
    """
    rollout_prev = torch.cat([rollouts.new_full((rollouts.size(0), 1), eos), rollouts[:, :-1]], dim=1)
    rollout_prev = rollout_prev.masked_fill(rollouts.eq(pad), pad)
    width = max(gold_prev.size(1), rollout_prev.size(1))
    mixed = gold_prev.new_full((gold_prev.size(0), width), pad)
    mixed[:, : gold_prev.size(1)] = gold_prev
    mixed[rows] = pad
    mixed[rows, : rollout_prev.size(1)] = rollout_prev
    return mixed[:, : int(mixed.ne(pad).sum(1).max())]
