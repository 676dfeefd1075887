import torch
import torch.nn.functional as F
import pytest

from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

import imitkd.losses as losses
from imitkd.losses import kd_cross_entropy

B, T, V = 3, 5, 11


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(B, T, V, generator=g, dtype=torch.float64, requires_grad=True)
    e = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    y = torch.randint(0, V, (B, T), generator=g)
    alpha = torch.rand(B, T, generator=g)
    return z, e, y, alpha


def test_full_kd_mixed_with_label_smoothed_nll_matches_reference(tensors):
    z, e, y, alpha = tensors
    out = kd_cross_entropy(z, e, y, alpha, label_smoothing=0.1)
    lp = F.log_softmax(z, -1)
    ls, _ = label_smoothed_nll_loss(lp.view(-1, V), y.view(-1), 0.1, ignore_index=None, reduce=False)
    ref = alpha * -(F.softmax(e, -1) * lp).sum(-1) + (1 - alpha) * ls.view(B, T)
    torch.testing.assert_close(out.loss.double(), ref.detach(), rtol=0, atol=1e-5)
    w = torch.rand(B, T, dtype=torch.float64)
    g1, = torch.autograd.grad((out.loss * w).sum(), z)
    g2, = torch.autograd.grad((ref * w).sum(), z)
    torch.testing.assert_close(g1, g2, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.gold_nll.double(), -lp.gather(-1, y[..., None]).squeeze(-1).detach(), rtol=0, atol=1e-5)
    assert torch.equal(out.student_argmax, z.argmax(-1)) and torch.equal(out.expert_argmax, e.argmax(-1))


def test_argmax_target_is_nll_of_expert_argmax(tensors):
    z, e, _, _ = tensors
    out = kd_cross_entropy(z, e, None, expert_argmax=True)
    ref = -F.log_softmax(z, -1).gather(-1, e.argmax(-1, keepdim=True)).squeeze(-1)
    torch.testing.assert_close(out.loss.double(), ref.detach(), rtol=0, atol=1e-5)
    g1, = torch.autograd.grad(out.loss.sum(), z)
    g2, = torch.autograd.grad(ref.sum(), z)
    torch.testing.assert_close(g1, g2, rtol=0, atol=1e-6)


def test_chunking_changes_nothing(tensors, monkeypatch):
    z, e, y, alpha = tensors
    whole = kd_cross_entropy(z, e, y, alpha, 0.1)
    g_whole, = torch.autograd.grad(whole.loss.sum(), z)
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 2 * V)  # two positions per chunk
    chunked = kd_cross_entropy(z, e, y, alpha, 0.1)
    g_chunked, = torch.autograd.grad(chunked.loss.sum(), z)
    assert torch.equal(whole.loss, chunked.loss) and torch.equal(g_whole, g_chunked)


def test_masked_positions_get_zero_gradient(tensors):
    z, e, _, _ = tensors
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 3:] = False
    out = kd_cross_entropy(z, e)
    grad, = torch.autograd.grad((out.loss * mask).sum(), z)
    assert grad[0, 3:].abs().max() == 0 and grad[0, :3].abs().max() > 0


def test_low_precision_logits_keep_their_dtype_and_values(tensors):
    z, e, y, _ = tensors
    zb = z.detach().to(torch.bfloat16).requires_grad_()
    out = kd_cross_entropy(zb, e.to(torch.bfloat16), y)
    ref = kd_cross_entropy(zb.detach().float().requires_grad_(), e.to(torch.bfloat16).float(), y)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=1e-4)
    grad, = torch.autograd.grad(out.loss.sum(), zb)
    assert grad.dtype == torch.bfloat16


def test_needs_a_target():
    with pytest.raises(ValueError, match="needs expert_logits, gold"):
        kd_cross_entropy(torch.zeros(2, 3))
