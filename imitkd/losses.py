"""Distillation losses as plain tensor functions (no models, no batches), in the style of
fairseq's ``label_smoothed_nll_loss``.

Every loss here is a cross-entropy ``−Σ_v q_v · log softmax(z)_v`` between the student's logits ``z``
and a target distribution ``q`` that mixes

* the expert's next-token distribution ``softmax(e)`` (ImitKD-full / word-level KD), or the one-hot of
  its argmax (ImitKD-optimal), with weight ``alpha``, and
* the label-smoothed one-hot of the gold token ``y`` (fairseq's ``label_smoothed_nll_loss``), with
  weight ``1 − alpha``.

Because Σ_v q_v = 1, the loss is ``logsumexp(z) − q·z`` and its gradient ``softmax(z) − q``. The fused
autograd function below evaluates both in chunks of positions, so no full-size fp32 copy of the
B×T×V student or expert scores is created (only the logits themselves are kept for backward; in
bf16/fp16 under autocast). Loss values are in nats.
"""
from typing import NamedTuple, Optional

import torch
from torch import Tensor

#: elements (positions × vocabulary) processed at once; bounds the fp32 temporaries (~16 MB).
CHUNK_ELEMENTS = 1 << 22


class KDLossOutput(NamedTuple):
    """Per-position results, each shaped like the leading dims of the logits (e.g. B×T)."""

    loss: Tensor  #: float32 cross-entropy in nats (differentiable w.r.t. the student logits)
    gold_nll: Optional[Tensor]  #: float32 −log p_student(gold) (no grad); None without gold
    student_argmax: Tensor  #: long
    expert_argmax: Optional[Tensor]  #: long; None without expert


def _chunks(n: int, vocab: int):
    step = max(1, CHUNK_ELEMENTS // max(1, vocab))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


class _FusedKDCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, expert, gold, alpha, eps, expert_argmax):
        n, vocab = logits.shape
        eps_i = eps / (vocab - 1)
        gold_weight = 1.0 - eps - eps_i
        loss = logits.new_empty(n, dtype=torch.float32)
        gold_nll = logits.new_empty(n, dtype=torch.float32) if gold is not None else None
        s_arg = torch.empty(n, dtype=torch.long, device=logits.device)
        e_arg = torch.empty(n, dtype=torch.long, device=logits.device) if expert is not None else None
        for sl in _chunks(n, vocab):
            z = logits[sl].float()
            lse = torch.logsumexp(z, dim=-1)
            s_arg[sl] = z.argmax(dim=-1)
            q_dot_z = torch.zeros_like(lse)
            if expert is not None:
                e = expert[sl].float()
                e_arg[sl] = e.argmax(dim=-1)
                if expert_argmax:
                    e_dot_z = z.gather(1, e_arg[sl, None]).squeeze(1)
                else:
                    e_dot_z = (torch.softmax(e, dim=-1) * z).sum(-1)
                q_dot_z += alpha[sl] * e_dot_z
            if gold is not None:
                z_gold = z.gather(1, gold[sl, None]).squeeze(1)
                gold_nll[sl] = lse - z_gold
                smooth = gold_weight * z_gold + (eps_i * z.sum(-1) if eps > 0 else 0.0)
                q_dot_z += (1.0 - alpha[sl]) * smooth
            loss[sl] = lse - q_dot_z
        ctx.save_for_backward(logits, expert, gold, alpha)
        ctx.eps, ctx.expert_argmax = eps, expert_argmax
        outputs = [t for t in (gold_nll, s_arg, e_arg) if t is not None]
        ctx.mark_non_differentiable(*outputs)
        return loss, gold_nll, s_arg, e_arg

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        logits, expert, gold, alpha = ctx.saved_tensors
        n, vocab = logits.shape
        eps = ctx.eps
        eps_i = eps / (vocab - 1)
        gold_weight = 1.0 - eps - eps_i
        grad = torch.empty_like(logits)
        for sl in _chunks(n, vocab):
            g = torch.softmax(logits[sl].float(), dim=-1)  # softmax(z) − q, built in place
            if expert is not None:
                a = alpha[sl, None]
                if ctx.expert_argmax:
                    e_arg = expert[sl].argmax(dim=-1, keepdim=True)
                    g.scatter_add_(1, e_arg, -a)
                else:
                    g.sub_(a * torch.softmax(expert[sl].float(), dim=-1))
            if gold is not None:
                b = 1.0 - alpha[sl, None]
                g.scatter_add_(1, gold[sl, None], -b * gold_weight)
                if eps > 0:
                    g.sub_(b * eps_i)
            grad[sl] = g.mul_(grad_loss[sl, None])
        return grad, None, None, None, None, None


def kd_cross_entropy(
    logits: Tensor,
    expert_logits: Optional[Tensor] = None,
    gold: Optional[Tensor] = None,
    alpha=1.0,
    label_smoothing: float = 0.0,
    expert_argmax: bool = False,
) -> KDLossOutput:
    """Cross-entropy of the student against a mixture of expert and (label-smoothed) gold targets.

    Args:
        logits: student scores, ``(*, V)`` (e.g. B×T×V), any float dtype.
        expert_logits: expert scores or log-probabilities over the same vocabulary, ``(*, V)``
            (softmax is applied, so unnormalised scores and log-probs give the same target), or None.
        gold: gold token ids ``(*)`` (long), or None.
        alpha: weight of the expert term, a float or a tensor broadcastable to ``(*)``; the gold term
            gets ``1 − alpha``. Must be 1 without gold and 0 without expert.
        label_smoothing: ε of the gold term (fairseq's convention: ε/(V−1) on every other token).
        expert_argmax: use the one-hot of the expert's argmax instead of its full distribution.

    Returns per-position values (no reduction, no padding mask: multiply by your mask, then sum).
    """
    if expert_logits is None and gold is None:
        raise ValueError("kd_cross_entropy needs expert_logits, gold, or both")
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    n = lead.numel()
    alpha = torch.as_tensor(alpha, dtype=torch.float32, device=logits.device).expand(lead).reshape(n)
    if expert_logits is None:
        alpha = torch.zeros_like(alpha)
    elif gold is None:
        alpha = torch.ones_like(alpha)
    else:
        if expert_logits.shape != logits.shape:
            raise ValueError(f"expert scores {tuple(expert_logits.shape)} != student scores {tuple(logits.shape)}")
    flat = lambda t: None if t is None else t.reshape(n, *t.shape[len(lead):])  # noqa: E731
    loss, gold_nll, s_arg, e_arg = _FusedKDCrossEntropy.apply(
        flat(logits), flat(expert_logits), flat(gold), alpha.contiguous(), float(label_smoothing), bool(expert_argmax)
    )
    unflat = lambda t: None if t is None else t.view(lead)  # noqa: E731
    return KDLossOutput(unflat(loss), unflat(gold_nll), unflat(s_arg), unflat(e_arg))
