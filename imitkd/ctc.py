"""CTC on the *source transcript* as an auxiliary loss of a speech student (as in ESPnet's ST recipe).

fairseq's ``label_smoothed_cross_entropy_with_ctc`` puts CTC on the training target (the
translation, for an ST model). Here the CTC target is the English transcript (a manifest column),
which is what makes a small encoder align to the audio early. The CTC head is fairseq's own: an
``s2t_transformer`` encoder builds ``ctc_proj`` (encoder dim → target dictionary) whenever
``--ctc-weight`` > 0, and ``model.get_ctc_output`` applies it. The transcript is therefore encoded in
the target dictionary: a joint source+target vocabulary, as the demo's ``dict.txt``. The blank is
index 0 (``<s>``), as in fairseq's CTC criteria, so an ASR model's head transfers to the students.
"""
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ImitKDError


def check_ctc_head(model, dictionary_size: int) -> None:
    """Fail unless ``model`` has a CTC head over a vocabulary of ``dictionary_size``."""
    encoder = getattr(model, "encoder", None)
    head = getattr(encoder, "ctc_proj", None)
    if head is None or not hasattr(model, "get_ctc_output"):
        raise ImitKDError(f"--ctc-weight needs a speech encoder with a CTC head; {type(model).__name__} has none "
                          "(s2t_transformer builds one when --ctc-weight > 0)")
    if head.out_features != dictionary_size:
        raise ImitKDError(f"--ctc-weight: the encoder's CTC head has {head.out_features} outputs but the transcript "
                          f"dictionary has {dictionary_size} symbols")


def transcript_ctc_loss(model, net_output, transcript: Tensor, pad: int, eos: int, blank: int = 0) -> Tensor:
    """Summed CTC loss in nats (a float32 scalar) of the encoder's CTC head against the transcript.

    Args:
        model: a fairseq speech model with ``get_ctc_output`` (e.g. ``S2TTransformerModel``).
        net_output: its forward output for the batch (``net_output[1]["encoder_out"]`` is read).
        transcript: B×S token ids of the transcript, padded with ``pad``; a final ``eos`` is dropped.
    Rows whose transcript is longer than the encoder output contribute 0 (``zero_infinity``).
    """
    lprobs, input_lengths = model.get_ctc_output(net_output, None)  # T×B×V float32 log-probs, B
    keep = transcript.ne(pad) & transcript.ne(eos)
    targets = transcript[keep]
    target_lengths = keep.sum(dim=1)
    with torch.backends.cudnn.flags(enabled=False):  # cuDNN's CTC has other length/blank limits
        return F.ctc_loss(lprobs, targets, input_lengths, target_lengths, blank=blank, reduction="sum",
                          zero_infinity=True)


def ctc_greedy(lprobs: Tensor, lengths: Tensor, blank: int = 0):
    """Best-path CTC decoding: per row, the argmax label of each of its first ``lengths[b]`` frames,
    repeats merged, then blanks dropped. ``lprobs``: T×B×V log-probs (as ``get_ctc_output`` returns),
    ``lengths``: B frames. Returns (B lists of label ids, B best-path log-probs as a float tensor)."""
    best_lp, best = lprobs.max(dim=-1)  # T×B
    best, best_lp = best.t(), best_lp.t()  # B×T
    valid = torch.arange(best.size(1), device=best.device)[None, :] < lengths.to(best.device)[:, None]
    changed = torch.ones_like(valid)
    changed[:, 1:] = best[:, 1:] != best[:, :-1]
    keep = valid & changed & best.ne(blank)
    return [row[k].tolist() for row, k in zip(best, keep)], (best_lp.float() * valid).sum(dim=1)


def ctc_log_likelihood(lprobs: Tensor, lengths: Tensor, labels) -> Tensor:
    """log p_CTC(y | x) of one label sequence per column: the sum over every alignment, in nats.

    ``lprobs``: T×N×V log-probs, ``lengths``: N frames, ``labels``: N lists of label ids (no blank).
    A sequence that no alignment within its frames produces (too long, counting the blank each repeated
    label needs) gets ``-inf``, so a joint decoder never prefers it. Returns N float32."""
    targets = torch.tensor([t for y in labels for t in y], dtype=torch.long, device=lprobs.device)
    target_lengths = torch.tensor([len(y) for y in labels], dtype=torch.long, device=lprobs.device)
    with torch.backends.cudnn.flags(enabled=False):
        nll = F.ctc_loss(lprobs.float(), targets, lengths.to(lprobs.device), target_lengths, blank=0,
                         reduction="none", zero_infinity=False)
    return -nll
