"""One-token decoder steps of a fairseq transformer decoder over a preallocated key/value cache.

fairseq's incremental decoding (``incremental_state``) grows every layer's cached keys/values by
``torch.cat`` at each step, looks them up in string-keyed dicts and runs the attention as a dozen small
ops: ≈ 1,400 ATen calls per step of a 6-layer decoder, ≈ 330 of them touching data. On a GPU that is
launch-bound; on a CPU the products dominate the decoding time (timings: benchmarks/README.md).
``CachedDecoder`` computes the same step with the decoder's own submodules (embeddings, projections,
layer norms, FFN, output layer): keys/values written in place into B×H×L×d buffers, the encoder's
keys/values projected once, attention by ``F.scaled_dot_product_attention``: ≈ 1,000 calls per step,
≈ 180 touching data (on GPUs, ``GraphedStep`` replays them as one CUDA graph). It covers fairseq's
``TransformerDecoderBase`` family (pre- and post-norm, sinusoidal or learned positions, embedding
layer norm, input/output projections, shared embeddings; e.g. ``s2t_transformer``, ``transformer``);
``unsupported`` names what it does not cover, and the rollout then uses fairseq's incremental decoding.
In fp32 its logits equal fairseq's to rounding (tests compare both and the greedy rollouts).
"""
import functools
import inspect
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.models.transformer import TransformerDecoderBase
from fairseq.modules import MultiheadAttention
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase
from torch import Tensor

from . import precision
from .precision import autocast


def _overrides(obj, base, name: str) -> bool:
    return inspect.getattr_static(type(obj), name) is not inspect.getattr_static(base, name)


def unsupported(decoder) -> Optional[str]:
    """Why ``CachedDecoder`` cannot run ``decoder`` (None: it can)."""
    if not isinstance(decoder, TransformerDecoderBase):
        return f"{type(decoder).__name__} is not a fairseq TransformerDecoder"
    for name in ("forward", "extract_features_scriptable", "output_layer"):
        if _overrides(decoder, TransformerDecoderBase, name):
            return f"{type(decoder).__name__} overrides {name}"
    if decoder.cross_self_attention or decoder.adaptive_softmax is not None:
        return "cross-self-attention / adaptive softmax"
    for layer in decoder.layers:
        if not isinstance(layer, TransformerDecoderLayerBase) or _overrides(layer, TransformerDecoderLayerBase, "forward"):
            return f"decoder layer {type(layer).__name__}"
        if any(getattr(layer, a, None) is not None for a in ("c_attn", "attn_ln", "ffn_layernorm", "w_resid")):
            return "scaled attention/FFN/residual layers (--scale-*)"
        for attn in (layer.self_attn, layer.encoder_attn):
            if attn is None:
                return "a decoder layer without encoder attention"
            if type(attn) is not MultiheadAttention or attn.bias_k is not None or attn.add_zero_attn:
                return f"attention {type(attn).__name__} (bias_kv / zero_attn / subclass)"
    return None


def int8_linears(decoder) -> List[torch.nn.Linear]:
    """The linear layers of a rollout decoder worth an int8 copy made at every rollout: the FFNs, the
    output projection (products of few rows with large weights: int8 reads a quarter of the bytes) and
    the encoder-attention keys/values (computed once for all source positions). The attention
    projections of the step's few rows are not: for them int8 is no faster than fp32, and the packing
    would cost."""
    linears = [decoder.output_projection] if isinstance(decoder.output_projection, torch.nn.Linear) else []
    for layer in decoder.layers:
        linears += [layer.fc1, layer.fc2, layer.encoder_attn.k_proj, layer.encoder_attn.v_proj]
    return [m for m in linears if type(m) is torch.nn.Linear]


class CachedDecoder:
    """Decodes B rows one token at a time for at most ``max_steps`` steps.

    Args:
        decoder: the model's ``TransformerDecoderBase`` in eval mode (``unsupported(decoder)`` is None).
        encoder_out: fairseq's encoder output dict (``encoder_out`` S×B×C, ``encoder_padding_mask`` B×S).
        max_steps: the number of ``step`` calls this decoder will take (cache length L).
        static_shapes: every step has the same shapes and no host-side dependence on the step number
            (the step is a 0-dim tensor; attention over all L cached positions, masked beyond the step),
            so that it can be captured once as a CUDA graph (``GraphedStep``); rows cannot be dropped.
        int8: multiply by int8 copies of the decoder's current weights where that pays (``int8_linears``;
            ``precision.int8``, CPUs), quantised here, once per rollout.

    The self-attention's query, key and value projections run as one product (their weights stacked
    once per rollout, in the autocast dtype if any).

    Runs in the caller's autocast region (if any); the caches take the dtype the projections produce.
    """

    def __init__(self, decoder, encoder_out: Dict[str, List[Tensor]], max_steps: int, static_shapes: bool = False,
                 int8: bool = False):
        self.decoder, self.max_steps, self.static_shapes = decoder, max_steps, static_shapes
        self.int8 = precision.Int8Weights(decoder, linears=int8_linears(decoder)) if int8 else None
        self.qkv = [self._stacked(layer.self_attn) for layer in decoder.layers]
        enc = encoder_out["encoder_out"][0]  # S×B×C
        pad_mask = encoder_out["encoder_padding_mask"]
        # B×1×1×S, True = attend (None: no padding)
        has_pad = len(pad_mask) > 0 and (static_shapes or bool(pad_mask[0].any()))
        self.enc_mask = (~pad_mask[0])[:, None, None, :] if has_pad else None
        self.enc_kv = [self._heads(layer.encoder_attn, self._linear(layer.encoder_attn.k_proj, enc),
                                   self._linear(layer.encoder_attn.v_proj, enc))
                       for layer in decoder.layers]
        self.self_kv: List[Optional[Tuple[Tensor, Tensor]]] = [None] * len(decoder.layers)
        self.positions = None  # L×C: position embeddings of the steps 0 … L−1
        if decoder.embed_positions is not None:
            any_token = decoder.padding_idx + 1
            self.positions = decoder.embed_positions(enc.new_full((1, max_steps), any_token, dtype=torch.long))[0]
        self.step_range = torch.arange(max_steps, device=enc.device)

    def _linear(self, linear, x: Tensor) -> Tensor:
        return linear(x) if self.int8 is None else self.int8.linear(linear, x)

    def _stacked(self, attn: MultiheadAttention):
        """x (B×C) → B×3C queries, keys and values in one product."""
        weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        biases = [p.bias if p.bias is not None else weight.new_zeros(p.out_features)
                  for p in (attn.q_proj, attn.k_proj, attn.v_proj)]
        bias = torch.cat(biases)
        device_type = weight.device.type
        if torch.is_autocast_enabled(device_type):  # cast once, not at every step
            dtype = torch.get_autocast_dtype(device_type)
            weight, bias = weight.to(dtype), bias.to(dtype)
        return lambda x: F.linear(x, weight, bias)

    @staticmethod
    def _heads(attn: MultiheadAttention, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        """S×B×C keys/values → B×H×S×d."""
        s, b, _ = k.shape
        split = lambda t: t.view(s, b, attn.num_heads, attn.head_dim).permute(1, 2, 0, 3).contiguous()
        return split(k), split(v)

    def reorder(self, rows: Tensor) -> None:
        """Keep only ``rows`` (indices into the current batch) in every cache."""
        assert not self.static_shapes, "a static-shape decoder keeps its rows"
        pick = lambda t: None if t is None else t.index_select(0, rows)
        self.enc_kv = [(pick(k), pick(v)) for k, v in self.enc_kv]
        self.self_kv = [None if kv is None else (pick(kv[0]), pick(kv[1])) for kv in self.self_kv]
        self.enc_mask = pick(self.enc_mask)

    def step(self, tokens: Tensor, t) -> Tensor:
        """Logits B×V (fp32) of the next token given the B tokens at step ``t`` (0: the leading EOS);
        ``t`` is an int, or a 0-dim long tensor on the decoder's device with ``static_shapes``."""
        d = self.decoder
        x = d.embed_scale * d.embed_tokens(tokens)  # B×C
        if d.quant_noise is not None:
            x = d.quant_noise(x)
        if d.project_in_dim is not None:
            x = self._linear(d.project_in_dim, x)
        if self.positions is not None:
            x = x + (self.positions.index_select(0, t.view(1)) if self.static_shapes else self.positions[t])
        if d.layernorm_embedding is not None:
            x = d.layernorm_embedding(x)
        # static shapes: attend to all L positions, those after t masked (1×1×1×L, True = attend)
        self_mask = (self.step_range <= t).view(1, 1, 1, -1) if self.static_shapes else None
        for i, layer in enumerate(d.layers):
            x = self._sublayer(layer, layer.self_attn_layer_norm, x,
                               lambda h: self._self_attention(i, layer.self_attn, h, t, self_mask))
            x = self._sublayer(layer, layer.encoder_attn_layer_norm, x,
                               lambda h: self._encoder_attention(i, layer.encoder_attn, h))
            x = self._sublayer(layer, layer.final_layer_norm, x,
                               lambda h: self._linear(layer.fc2, layer.activation_fn(self._linear(layer.fc1, h))))
        if d.layer_norm is not None:
            x = d.layer_norm(x)
        if d.project_out_dim is not None:
            x = self._linear(d.project_out_dim, x)
        if self.int8 is not None and d.output_projection in self.int8.packed:  # = output_layer (``unsupported``)
            return self._linear(d.output_projection, x)
        return d.output_layer(x).float()

    @staticmethod
    def _sublayer(layer, norm, x: Tensor, fn) -> Tensor:
        """Residual block in the layer's order: pre-norm ``x + fn(norm(x))``, post-norm ``norm(x + fn(x))``."""
        if layer.normalize_before:
            return layer.residual_connection(fn(norm(x)), x)
        return norm(layer.residual_connection(fn(x), x))

    def _self_attention(self, i: int, attn: MultiheadAttention, x: Tensor, t, mask: Optional[Tensor]) -> Tensor:
        b, h, hd = x.size(0), attn.num_heads, attn.head_dim
        q, k, v = (part.view(b, h, 1, hd) for part in self.qkv[i](x).chunk(3, dim=-1))
        if self.self_kv[i] is None:  # zeros: masked positions must hold finite numbers
            shape = (b, h, self.max_steps, hd)
            self.self_kv[i] = (k.new_zeros(shape), v.new_zeros(shape))
        k_cache, v_cache = self.self_kv[i]
        if self.static_shapes:
            k_cache.index_copy_(2, t.view(1), k)
            v_cache.index_copy_(2, t.view(1), v)
        else:
            k_cache[:, :, t : t + 1] = k
            v_cache[:, :, t : t + 1] = v
            k_cache, v_cache = k_cache[:, :, : t + 1], v_cache[:, :, : t + 1]
        out = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, scale=attn.scaling)
        return self._linear(attn.out_proj, out.reshape(b, -1))

    def _encoder_attention(self, i: int, attn: MultiheadAttention, x: Tensor) -> Tensor:
        b = x.size(0)
        q = self._linear(attn.q_proj, x).view(b, attn.num_heads, 1, attn.head_dim)
        k, v = self.enc_kv[i]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.enc_mask, scale=attn.scaling)
        return self._linear(attn.out_proj, out.reshape(b, -1))


@functools.lru_cache(maxsize=None)
def _capture_resources(device: torch.device) -> Tuple["torch.cuda.Stream", "torch.cuda.MemPool"]:
    """The side stream and the memory pool that every ``GraphedStep`` on ``device`` captures with, for
    the whole process. One stream: its cuBLAS workspace is made once, by the first warm-up. One pool,
    kept alive by this cache: a graph's buffers go back to it when the graph is freed and the next
    rollout's capture reuses them (a pool of its own per graph would take new device memory at every
    batch and keep it reserved; a bare ``graph_pool_handle`` dies with the last graph using it)."""
    with torch.cuda.device(device):
        return torch.cuda.Stream(device), torch.cuda.MemPool()


class GraphedStep:
    """``CachedDecoder.step`` (static shapes) captured once as a CUDA graph and replayed per step.

    fairseq's decoder step is hundreds of small kernels launched from Python; a replay launches them
    all at once. Captured per rollout batch (B and S change between batches) after one warm-up step
    on the capture stream, as PyTorch's CUDA-graph notes prescribe; autocast runs without its weight
    cache during capture (the casts become part of the graph). The capture calls
    ``CUDAGraph.capture_begin``/``capture_end`` itself rather than ``torch.cuda.graph``, whose entry
    synchronises the device and empties the allocator's cache: harmless once per process, but at
    every training step it would make the rest of the update allocate its memory afresh.
    The returned logits live in the graph's output buffer: read them before the next call.
    """

    def __init__(self, cached: CachedDecoder, autocast_dtype: Optional[torch.dtype]):
        assert cached.static_shapes
        self.cached = cached  # the graph reads and writes its buffers: they must live as long as it does
        device = cached.step_range.device
        batch = cached.enc_kv[0][0].size(0)
        self.tokens = torch.zeros(batch, dtype=torch.long, device=device)
        self.t = torch.zeros((), dtype=torch.long, device=device)
        stream, pool = _capture_resources(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(stream), autocast(device, autocast_dtype, cache=False):
            cached.step(self.tokens, self.t)  # warm-up: allocates the self-attention caches
            # thread_local: CUDA calls of other threads (e.g. a data loader's pin-memory thread) may go on
            self.graph.capture_begin(pool=pool.id, capture_error_mode="thread_local")
            try:
                self.logits = cached.step(self.tokens, self.t)
            finally:
                self.graph.capture_end()
        torch.cuda.current_stream(device).wait_stream(stream)

    def __call__(self, tokens: Tensor, t: int) -> Tensor:
        self.tokens.copy_(tokens)
        self.t.fill_(t)
        self.graph.replay()
        return self.logits
