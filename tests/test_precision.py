"""Precision choices (``imitkd.precision``): what ``auto`` picks, and bf16 rollouts and expert
agreeing with fp32 (on GPUs: test_cuda.py)."""
import torch

import toydata
from imitkd.rollout import student_rollout
from toydata import EXACT, load_student


def test_auto_precision_is_bf16_only_where_bf16_is_native(monkeypatch):
    from imitkd import precision
    cpu = torch.device("cpu")
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
        assert precision.resolve("auto", cpu) == expected
        assert precision.resolve("fp32", cpu) == torch.float32 and precision.resolve("bf16", cpu) == torch.bfloat16
        # CPU: only the rollout's encoder pass is lowered; an fp16/bf16 model is never autocast
        assert precision.rollout_autocast("auto", cpu, torch.float32) == (None if expected == torch.float32 else expected, None)
        assert precision.rollout_autocast("bf16", cpu, torch.float16) == (None, None)


def test_bf16_is_native_only_with_the_cpu_flag_and_uncapped_kernels():
    """``auto``'s CPU test: AVX512-BF16 or AMX in /proc/cpuinfo, and neither torch (``ATEN_CPU_CAPABILITY``)
    nor oneDNN (``ONEDNN_MAX_CPU_ISA``) capped below them (capped, bf16 is emulated: e.g. an AVX2 emulation)."""
    from imitkd.precision import bf16_is_native
    amx = ["fma", "avx2", "avx512f", "avx512_bf16", "amx_bf16"]
    assert bf16_is_native(amx, "AVX512") and bf16_is_native(["avx512_bf16"], "AVX512", "AVX512_CORE_AMX")
    assert not bf16_is_native(["fma", "avx2"], "AVX2")  # an AVX2-only CPU
    assert not bf16_is_native(amx, "AVX2")  # ATEN_CPU_CAPABILITY=avx2
    assert not bf16_is_native(amx, "AVX512", "avx2")  # ONEDNN_MAX_CPU_ISA=avx2
    assert not bf16_is_native(["avx512f"], "AVX512")  # AVX-512 without bf16 (e.g. Skylake-SP)


def test_bf16_rollouts_and_expert_agree_with_fp32(toy, toy_student):
    """--rollout-dtype/--expert-dtype bf16 (what ``auto`` picks on CPUs with native bf16 and on GPUs):
    a trained student's rollouts are the fp32 ones, and the β = 0 loss is within 2 %."""
    flags = ["--dropout", "0", "--beta", "0", "--beta-schedule", "constant"]
    _, task, model, exact = toydata.build_in_process(toy, "imit_kd_CE", EXACT + flags[2:])
    _, _, _, low = toydata.build_in_process(toy, "imit_kd_CE", flags + ["--expert-dtype", "bf16", "--rollout-dtype", "bf16"])
    load_student(model, toy_student)
    sample = dict(toydata.first_batch(task, max_sentences=16), update_num=0)
    ni = sample["net_input"]
    caps = torch.full((ni["src_tokens"].size(0),), 30)
    fp32 = student_rollout(model, ni["src_tokens"], ni["src_lengths"], caps, eos=2, pad=1)
    bf16 = student_rollout(model, ni["src_tokens"], ni["src_lengths"], caps, eos=2, pad=1, encoder_dtype=torch.bfloat16)
    assert bf16.shape == fp32.shape and (bf16 == fp32).float().mean() > 0.95
    model.train()
    l32, n32, _ = exact(model, sample)
    l16, n16, log = low(model, sample)
    assert low.expert.dtype == torch.bfloat16 and exact.expert.dtype == torch.float32
    assert log["rollout_rows"] == 16 and abs(n16 - n32) <= 2
    per_position_32, per_position_16 = l32.item() / n32, l16.item() / n16
    assert abs(per_position_16 - per_position_32) < 0.02 * per_position_32
