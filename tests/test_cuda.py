"""The criteria on a CUDA GPU (skipped where there is none; CI has none, the benchmark machine may).

Training through the CLI in fairseq's fp16 modes (``--fp16``: half model + loss scaling; ``--amp``:
fp16 autocast), bf16-autocast training steps in-process (what ``benchmarks/train_step.py --device
cuda --bf16`` times), and GPU rollouts (host syncs every 8 steps, finished rows compacted; the
cached decoder, its CUDA-graph replay and fairseq's incremental decoding) equal to fairseq's
``SequenceGenerator`` and to the CPU rollouts.
"""
import math
import re

import pytest
import torch
from fairseq import utils
from fairseq.sequence_generator import SequenceGenerator

import toydata
from imitkd.losses import kd_cross_entropy
from imitkd.rollout import student_rollout
from toydata import EXACT, load_student

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def on_gpu(args):
    return [str(a) for a in args if str(a) != "--cpu"]


@pytest.mark.parametrize("precision", ["--fp16", "--amp"])
@pytest.mark.parametrize("criterion", ["imit_kd_CE", "imit_kd", "word_kd"])
def test_criteria_train_on_gpu_in_fp16(toy, tmp_path, criterion, precision):
    args = on_gpu(toydata.student_train_args(toy, criterion, tmp_path / "ckpt", 40,
                                             ["--beta-decay-updates", "40", precision]))
    out = toydata.run("imitkd-train", *args)
    losses = [float(x) for x in re.findall(r"valid on 'dev' subset \| loss ([\d.]+)", out.stdout)]
    assert len(losses) >= 5 and losses[-1] < losses[0] - 0.3, losses
    assert re.search(r"expert \S+ runs on cuda\S* in bfloat16 \(--expert-dtype auto\)", out.stdout)
    train = [float(x) for x in re.findall(r"train\W+epoch \d+ \| loss ([^ |]+)", out.stdout)]
    assert train and all(math.isfinite(x) for x in train)
    if criterion != "word_kd":
        assert "rollout_frac" in out.stdout
    state = torch.load(tmp_path / "ckpt" / "checkpoint_last.pt", weights_only=False)
    assert not any("expert" in k for k in state["model"])


def test_bf16_autocast_training_steps(toy):
    """imit_kd_CE at β = 0 (every row rolled out), forward under bf16 autocast, expert and rollout
    dtypes ``auto`` (bf16): finite, within 5 % of fp32 at the first step, and it learns."""
    flags = ["--dropout", "0", "--beta", "0", "--beta-schedule", "constant"]
    per_position = {}
    for name, extra, autocast in (("fp32", EXACT[2:], False), ("bf16", [], True)):
        _, task, model, crit = toydata.build_in_process(toy, "imit_kd_CE", flags + extra)
        model.cuda().train()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        sample = dict(utils.move_to_cuda(toydata.first_batch(task, max_sentences=16)), update_num=0)
        curve = []
        for _ in range(30):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                loss, n, log = crit(model, sample)
            (loss / n).backward()
            opt.step()
            opt.zero_grad()
            curve.append(loss.item() / n)
        assert log["rollout_rows"] == 16 and all(math.isfinite(x) for x in curve)
        assert crit.expert.dtype == (torch.float32 if name == "fp32" else torch.bfloat16)
        assert next(crit.expert.models[0].parameters()).is_cuda
        assert curve[-1] < 0.7 * curve[0], curve
        per_position[name] = curve[0]
    assert abs(per_position["bf16"] - per_position["fp32"]) < 0.05 * per_position["fp32"], per_position


@pytest.mark.parametrize("decoding", ["cached", "cuda-graph", "fairseq"])
def test_gpu_rollouts_equal_sequence_generator_and_cpu(toy, toy_student, decoding):
    _, task, model, _ = toydata.build_in_process(toy, "imit_kd_CE", EXACT)
    load_student(model, toy_student)
    sample = toydata.first_batch(task, max_sentences=16)
    ni = sample["net_input"]
    caps = torch.full((ni["src_tokens"].size(0),), 30)
    on_cpu = student_rollout(model, ni["src_tokens"], ni["src_lengths"], caps, eos=2, pad=1)
    model.cuda()
    gpu_input = utils.move_to_cuda({"src_tokens": ni["src_tokens"], "src_lengths": ni["src_lengths"]})
    ours = student_rollout(model, gpu_input["src_tokens"], gpu_input["src_lengths"], caps, eos=2, pad=1,
                           decoding=decoding)
    assert ours.is_cuda and torch.equal(ours.cpu(), on_cpu)
    model.eval()
    hyps = SequenceGenerator([model], task.target_dictionary, beam_size=1, max_len_a=0,
                             max_len_b=30).generate([model], {"net_input": gpu_input})
    for i, h in enumerate(hyps):
        ref = h[0]["tokens"]
        assert torch.equal(ours[i, : len(ref)], ref) and ours[i, len(ref):].eq(1).all()


def test_cuda_graph_rollouts_in_bf16_match_eager_and_free_their_memory(toy, toy_student):
    """--rollout-dtype bf16 on a GPU: the graphed decoder step gives the eager cached decoder's rollouts
    (≥ 95 % of tokens; its attention spans all cached positions, masked, so sums may round differently),
    sampling works with it, nothing stays allocated after the rollout, and later rollouts capture into
    the same memory (no cudaMalloc/cudaFree: the allocator's cache is neither grown nor emptied)."""
    _, task, model, _ = toydata.build_in_process(toy, "imit_kd_CE", EXACT)
    load_student(model, toy_student)
    model.cuda()
    sample = utils.move_to_cuda(toydata.first_batch(task, max_sentences=16))
    ni = sample["net_input"]
    caps = torch.full((ni["src_tokens"].size(0),), 30, device="cuda")
    kw = dict(eos=2, pad=1, encoder_dtype=torch.bfloat16, decoder_dtype=torch.bfloat16)
    eager = student_rollout(model, ni["src_tokens"], ni["src_lengths"], caps, decoding="cached", **kw)
    graphed = student_rollout(model, ni["src_tokens"], ni["src_lengths"], caps, decoding="cuda-graph", **kw)
    torch.cuda.synchronize()
    allocated, before = torch.cuda.memory_allocated(), torch.cuda.memory_stats()
    for _ in range(2):
        again = student_rollout(model, ni["src_tokens"], ni["src_lengths"], caps, decoding="cuda-graph", **kw)
        assert torch.equal(again, graphed)
    del again
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= allocated  # the graph and its buffers were released
    after = torch.cuda.memory_stats()
    for key in ("num_device_alloc", "num_device_free"):  # later captures reuse the pool; nothing emptied
        assert after[key] == before[key], (key, before[key], after[key])
    width = min(eager.size(1), graphed.size(1))
    assert graphed.ne(1).sum() > 16 * 3
    assert eager[:, :width].eq(graphed[:, :width]).float().mean() > 0.95
    torch.manual_seed(0)
    sampled = student_rollout(model, ni["src_tokens"], ni["src_lengths"], caps, decoding="cuda-graph",
                              sample=True, topk=1, **kw)
    assert torch.equal(sampled, graphed)  # top-1 sampling is greedy
    assert model.training


@pytest.mark.parametrize("precision", ["--amp", "--fp16"])  # graphs captured under bf16 autocast / in fp16
def test_cli_training_with_cuda_graph_rollouts(toy, tmp_path, precision):
    args = on_gpu(toydata.student_train_args(toy, "imit_kd_CE", tmp_path / "ckpt", 40,
                                             ["--beta-decay-updates", "40", precision, "--rollout-decoding", "cuda-graph"]))
    out = toydata.run("imitkd-train", *args)
    losses = [float(x) for x in re.findall(r"valid on 'dev' subset \| loss ([\d.]+)", out.stdout)]
    assert len(losses) >= 5 and losses[-1] < losses[0] - 0.3, losses
    assert max(float(x) for x in re.findall(r"rollout_frac[ =]([\d.]+)", out.stdout)) > 0.5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_loss_on_gpu_in_half_precision(dtype):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 7, 9000, generator=g, dtype=torch.float64)
    e = torch.randn(4, 7, 9000, generator=g, dtype=torch.float64)
    y = torch.randint(0, 9000, (4, 7), generator=g)
    ref_z = z.clone().requires_grad_()
    ref = kd_cross_entropy(ref_z, e, y, 0.7, 0.1)
    ref_grad, = torch.autograd.grad(ref.loss.sum(), ref_z)
    low_z = z.to("cuda", dtype).requires_grad_()
    out = kd_cross_entropy(low_z, e.to("cuda", dtype), y.cuda(), 0.7, 0.1)
    grad, = torch.autograd.grad(out.loss.sum(), low_z)
    assert out.loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(out.loss.cpu(), ref.loss.detach(), rtol=2e-2, atol=2e-2)  # both float32
    torch.testing.assert_close(grad.cpu().double(), ref_grad, rtol=0, atol=2e-3)
