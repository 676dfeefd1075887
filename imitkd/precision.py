"""Precision of the work that needs no gradient: the expert's forward and the student's rollouts.

``auto`` (the default of ``--expert-dtype`` and ``--rollout-dtype``) means bf16 where the hardware
does bf16 matrix products natively — CUDA GPUs that support bf16, and CPUs with AVX512-BF16 or AMX
(e.g. AMD Zen 4, Intel Sapphire Rapids), where large bf16 products run faster than fp32 ones — and
fp32 elsewhere, where bf16 would be emulated and slower (also where ``ATEN_CPU_CAPABILITY`` or
``ONEDNN_MAX_CPU_ISA`` caps the kernels below AVX-512 bf16). Neither choice touches the student's
training forward or its gradients. Timings: benchmarks/README.md ("Where the time goes").

``int8`` (opt-in; ``auto`` never picks it: its speed-up on AVX2 CPUs did not reproduce between quiet runs,
see benchmarks/README.md for that and its training checks) keeps activations in fp32
but multiplies by int8 copies of the weights of every ``nn.Linear``: torch's dynamic quantisation
(``quantize_dynamic``'s scheme — symmetric int8 weights, activations quantised per call, fbgemm
kernels — written out here so that no module is copied). The frozen expert is quantised once (one
scale per output channel); a rollout re-quantises the student's current weights (one scale per tensor,
the cheaper packing) every time it runs, so it always decodes with the weights being trained.
"""
import contextlib
import functools
import os
import warnings
from typing import Dict, Iterable, Optional

import torch
from torch import Tensor, nn

from .errors import ImitKDError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
INT8 = "int8"  #: int8 weights for the linear layers, fp32 elsewhere (CPUs only)
CHOICES = ["auto", *DTYPES, INT8]


#: ``ONEDNN_MAX_CPU_ISA`` values that keep oneDNN below its bf16 kernels
ONEDNN_ISAS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"}


def bf16_is_native(cpu_flags, torch_capability: str, onednn_max_isa: str = "") -> bool:
    """Whether bf16 products are native: the CPU lists AVX512-BF16 or AMX-BF16, torch's kernels may use
    AVX-512 (``ATEN_CPU_CAPABILITY``, e.g. ``AVX512``; capped at ``AVX2`` it is not) and oneDNN is not capped
    below its bf16 kernels (``ONEDNN_MAX_CPU_ISA``). With either cap bf16 is emulated, as on an AVX2 CPU."""
    return (("avx512_bf16" in cpu_flags or "amx_bf16" in cpu_flags) and torch_capability.upper().startswith("AVX512")
            and onednn_max_isa.upper() not in ONEDNN_ISAS_WITHOUT_BF16)


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """``bf16_is_native`` for this CPU (/proc/cpuinfo), this torch (which must have oneDNN) and its environment."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return bf16_is_native(flags, torch.backends.cpu.get_cpu_capability(), os.environ.get("ONEDNN_MAX_CPU_ISA", ""))


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def int8_available() -> bool:
    """True when torch has the x86 (fbgemm) engine for int8 dynamic linear products."""
    return any(e in torch.backends.quantized.supported_engines for e in ("x86", "fbgemm"))


def int8(flag: str, device: torch.device) -> bool:
    """Whether ``flag`` means int8 linear layers on ``device`` (only ``int8`` does, never ``auto``). Raises
    ImitKDError for ``int8`` off an x86 CPU with fbgemm."""
    if flag == INT8 and (device.type != "cpu" or not int8_available()):
        raise ImitKDError(f"int8 (--expert-dtype/--rollout-dtype) runs on x86 CPUs with fbgemm, not on {device}; "
                          "use bf16 or fp32")
    return flag == INT8


def describe(flag: str, device: torch.device) -> str:
    """What ``flag`` means on ``device``, e.g. ``bf16`` or ``int8 linear layers (fp32 elsewhere)``."""
    if int8(flag, device):
        return "int8 linear layers (fp32 elsewhere)"
    return {v: k for k, v in DTYPES.items()}[resolve(flag, device)]


def resolve(flag: str, device: torch.device) -> torch.dtype:
    """The floating dtype a ``--*-dtype`` flag (``auto``, ``fp32``, ``fp16``, ``bf16``, ``int8``) means on
    ``device``: that of the weights and activations (int8: fp32, the linear layers' weights aside)."""
    if flag == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return torch.float32 if flag == INT8 else DTYPES[flag]


def autocast_dtype(flag: str, device: torch.device, param_dtype: torch.dtype) -> Optional[torch.dtype]:
    """The autocast dtype for a no-grad pass of a model whose parameters are ``param_dtype``, or
    None (run as is): autocast only lowers an fp32 model."""
    dtype = resolve(flag, device)
    if param_dtype != torch.float32 or dtype == torch.float32:
        return None
    return dtype


def rollout_autocast(flag: str, device: torch.device, param_dtype: torch.dtype):
    """(encoder, decoding) autocast dtypes of a rollout (``--rollout-dtype``). On CPUs only the
    encoder pass is lowered: the decoding's one-token steps are small products that run faster in fp32
    there (timings: benchmarks/README.md)."""
    dtype = autocast_dtype(flag, device, param_dtype)
    return dtype, (dtype if device.type == "cuda" else None)


def autocast(device: torch.device, dtype: Optional[torch.dtype], cache: bool = True):
    """Autocast to ``dtype``, or (None) no autocast at all, whatever the caller's context (a no-op
    on devices without autocast); ``cache=False`` for CUDA-graph capture."""
    if not torch.amp.is_autocast_available(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None, cache_enabled=cache)


# -- int8 linear layers -----------------------------------------------------------------------------
def quantise_int8(weight: Tensor, bias: Optional[Tensor], per_channel: bool = False):
    """fbgemm-packed symmetric int8 copy of an out×in weight (scale max|w|/127.5, as quantize_dynamic)."""
    w = weight.detach().float()
    with warnings.catch_warnings():  # torch flags its quantised tensor types as deprecated
        warnings.simplefilter("ignore")
        if per_channel:
            scale = (w.abs().amax(1) / 127.5).clamp_(min=1e-8).double()
            q = torch.quantize_per_channel(w, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
        else:
            q = torch.quantize_per_tensor(w, max(float(w.abs().max()) / 127.5, 1e-8), 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(q, None if bias is None else bias.detach().float())


def int8_linear(packed, x: Tensor) -> Tensor:
    """``x`` (*×in, fp32) times an int8 packed weight → *×out fp32 (activations quantised per call, 7 bits
    as quantize_dynamic does on x86)."""
    return torch.ops.quantized.linear_dynamic(x, packed, True)


class Int8Linear(nn.Module):
    """Stand-in for an ``nn.Linear`` whose weight is an int8 packed copy (no parameters)."""

    def __init__(self, linear: nn.Linear, packed):
        super().__init__()
        self.in_features, self.out_features, self.packed = linear.in_features, linear.out_features, packed

    def forward(self, x: Tensor) -> Tensor:
        return int8_linear(self.packed, x)


class Int8Weights:
    """int8 copies of the current weights of some ``nn.Linear`` layers (default: all of ``module``'s), to
    be used by ``linear`` or, for a whole fairseq module, swapped in (``swapped_in``, ``install``).
    ``per_channel``: one scale per output row (more exact, slower to pack) instead of one per tensor."""

    def __init__(self, module: nn.Module, per_channel: bool = False, linears: Optional[Iterable[nn.Linear]] = None):
        linears = [m for m in module.modules() if type(m) is nn.Linear] if linears is None else linears
        self.packed: Dict[nn.Module, object] = {m: quantise_int8(m.weight, m.bias, per_channel) for m in linears}

    def linear(self, module: nn.Module, x: Tensor) -> Tensor:
        """``module(x)`` with the int8 weight where ``module`` was packed."""
        packed = self.packed.get(module)
        return module(x) if packed is None else int8_linear(packed, x)

    @contextlib.contextmanager
    def swapped_in(self, module: nn.Module):
        """Run ``module`` with ``Int8Linear`` stand-ins for its packed linear layers (restored on exit).
        fairseq attention then takes its own path (``skip_embed_dim_check``) instead of PyTorch's
        fused one, which reads the projections' weights directly."""
        swapped, attentions = _swap_linears(module, self.packed)
        try:
            yield module
        finally:
            for parent, name, linear in swapped:
                parent._modules[name] = linear
            for attn in attentions:
                attn.skip_embed_dim_check = False

    def install(self, module: nn.Module) -> None:
        """Replace the packed linear layers of ``module`` for good (a frozen model: its fp32 weights go)."""
        _swap_linears(module, self.packed)


def _swap_linears(module: nn.Module, packed):
    swapped, attentions = [], []
    for parent in list(module.modules()):
        for name, child in list(parent._modules.items()):
            if child in packed:
                parent._modules[name] = Int8Linear(child, packed[child])
                swapped.append((parent, name, child))
        if hasattr(parent, "skip_embed_dim_check") and not parent.skip_embed_dim_check:
            parent.skip_embed_dim_check = True
            attentions.append(parent)
    return swapped, attentions
