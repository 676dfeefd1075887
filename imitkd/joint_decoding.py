"""Joint CTC/attention rescoring for a speech model with a CTC head (as ESPnet decodes its ASR models).

The attention decoder's beam search proposes an n-best list; the CTC head's best path is added to it;
each candidate y is scored as ``λ·log p_CTC(y|x) + (1−λ)·log p_att(y|x) + b·|y|`` (nats, |y| in tokens
without the end of sentence) and the best one kept. CTC vetoes the attention decoder's typical errors
(loops, dropped or invented words: their CTC likelihood is far lower or −inf), and the attention
decoder repairs the best path's spelling.
"""
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from .ctc import ctc_greedy, ctc_log_likelihood


def attention_log_likelihood(model, encoder_out: Dict, order: Tensor, candidates: Sequence[Sequence[int]],
                             pad: int, eos: int) -> Tensor:
    """Teacher-forced log p_att(y|x) in nats: the sum of the decoder's log-probs of every token of each
    candidate and of its end of sentence. ``encoder_out``: the encoder's output for a batch; ``order``:
    N row indices of that batch, one per candidate; ``candidates``: N label lists without eos.
    Returns N float32."""
    n, width = len(candidates), max(len(y) for y in candidates) + 1
    device = order.device
    target = torch.full((n, width), pad, dtype=torch.long, device=device)
    prev = torch.full((n, width), pad, dtype=torch.long, device=device)
    prev[:, 0] = eos
    for i, y in enumerate(candidates):
        row = torch.tensor(list(y) + [eos], dtype=torch.long, device=device)
        target[i, : len(row)] = row
        prev[i, 1: len(row)] = row[:-1]
    out = model.decoder(prev, encoder_out=model.encoder.reorder_encoder_out(encoder_out, order))
    lprobs = model.get_normalized_probs(out, log_probs=True)  # N×width×V
    token = lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1).float()
    return token.masked_fill(target.eq(pad), 0.0).sum(dim=1)


def joint_decode(model, task, generator, sample: Dict, ctc_weight: float, length_bonus: float,
                 specials: Sequence[int], pad: int, eos: int) -> List[Tuple[List[int], float]]:
    """The jointly best transcript of every row of ``sample`` (batch order): ``(labels without eos,
    joint score in nats)`` pairs. ``generator``: fairseq's ``SequenceGenerator`` for ``model`` (its
    ``beam``/``nbest`` give the candidates); ``specials``: labels dropped from the best path. The encoder
    runs once more than the beam search's own pass (fairseq's generator does not return its output).
    A beam hypothesis's log p_att is the sum of its ``positional_scores`` (the beam search's own
    per-token log-probs, eos included: the same number as teacher forcing, tested); only a best path that
    is not in the n-best is teacher-forced (``attention_log_likelihood``), which at beam 32 halves the time."""
    net_input = {k: v for k, v in sample["net_input"].items() if k != "prev_output_tokens"}
    hypos = task.inference_step(generator, [model], sample)
    encoder_out = model.encoder(**net_input)
    lprobs, lengths = model.get_ctc_output([None, {"encoder_out": encoder_out}], None)  # T×B×V, B
    best_path, _ = ctc_greedy(lprobs, lengths, blank=0)
    candidates, rows, att = [], [], []  # att: each candidate's log p_att, None where it is to be computed
    for b, nbest in enumerate(hypos):
        mine = [[t for t in h["tokens"].tolist() if t != eos] for h in nbest]
        att += [float(h["positional_scores"].sum()) for h in nbest]
        path = [t for t in best_path[b] if t not in specials]
        if path and path not in mine:
            mine.append(path)
            att.append(None)
        candidates += mine
        rows += [b] * len(mine)
    order = torch.tensor(rows, dtype=torch.long, device=lprobs.device)
    forced = [i for i, a in enumerate(att) if a is None]
    if forced:
        paths = attention_log_likelihood(model, encoder_out, order[forced], [candidates[i] for i in forced], pad, eos)
        for i, a in zip(forced, paths.tolist()):
            att[i] = a
    att = torch.tensor(att, dtype=torch.float32, device=lprobs.device)
    size = torch.tensor([len(y) for y in candidates], dtype=torch.float32, device=att.device)
    score = (1.0 - ctc_weight) * att + length_bonus * size
    if ctc_weight:  # with λ = 0 no CTC term (0·(−inf) would be nan for a CTC-infeasible candidate)
        ctc = ctc_log_likelihood(lprobs.index_select(1, order), lengths.index_select(0, order), candidates)
        score = score + ctc_weight * ctc
    best = []
    for b in range(len(hypos)):
        mine = (order == b).nonzero().squeeze(1)
        i = int(mine[score[mine].argmax()])
        best.append((candidates[i], float(score[i])))
    return best
