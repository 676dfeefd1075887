"""Precision of the work that needs no gradient: the expert's forward and the student's rollouts.

``auto`` (the default of ``--expert-dtype`` and ``--rollout-dtype``) means bf16 where the hardware
does bf16 matrix products natively — CUDA GPUs that support bf16, and CPUs with AVX512-BF16 or AMX
(e.g. AMD Zen 4, Intel Sapphire Rapids; measured on Zen 4: a 1600×256·256×2048 product 2.4× faster
than fp32) — and fp32 elsewhere, where bf16 would be emulated and slower. Neither choice touches
the student's training forward or its gradients.
"""
import contextlib
import functools
from typing import Optional

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CHOICES = ["auto", *DTYPES]


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """True when /proc/cpuinfo lists AVX512-BF16 or AMX-BF16 and torch has oneDNN (mkldnn)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def resolve(flag: str, device: torch.device) -> torch.dtype:
    """The dtype a ``--*-dtype`` flag (``auto``, ``fp32``, ``fp16``, ``bf16``) means on ``device``."""
    if flag == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return DTYPES[flag]


def autocast_dtype(flag: str, device: torch.device, param_dtype: torch.dtype) -> Optional[torch.dtype]:
    """The autocast dtype for a no-grad pass of a model whose parameters are ``param_dtype``, or
    None (run as is): autocast only lowers an fp32 model."""
    dtype = resolve(flag, device)
    if param_dtype != torch.float32 or dtype == torch.float32:
        return None
    return dtype


def rollout_autocast(flag: str, device: torch.device, param_dtype: torch.dtype):
    """(encoder, decoding) autocast dtypes of a rollout (``--rollout-dtype``). On CPUs only the
    encoder pass is lowered: the decoding's one-token steps are small products that run faster in
    fp32 there (measured on Zen 4, one thread: 425 ms fp32 vs 492 ms under bf16 autocast for 16 rows ×
    27 steps of s2t_transformer_s)."""
    dtype = autocast_dtype(flag, device, param_dtype)
    return dtype, (dtype if device.type == "cuda" else None)


def autocast(device: torch.device, dtype: Optional[torch.dtype], cache: bool = True):
    """Autocast to ``dtype``, or (None) no autocast at all, whatever the caller's context (a no-op
    on devices without autocast); ``cache=False`` for CUDA-graph capture."""
    if not torch.amp.is_autocast_available(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None, cache_enabled=cache)
