"""imitkd.cached_decoder: one-token steps over a preallocated key/value cache give fairseq's logits."""
import argparse
import logging

import pytest
import torch
from fairseq.data import Dictionary
from fairseq.models.transformer import TransformerModel, base_architecture

from imitkd.cached_decoder import CachedDecoder, unsupported
from imitkd.rollout import student_rollout

VARIANTS = {
    "pre-norm": dict(decoder_normalize_before=True),
    "post-norm, learned positions, embedding layer norm": dict(layernorm_embedding=True, decoder_learned_pos=True),
    "input/output projections, gelu, unscaled, untied": dict(
        decoder_input_dim=40, decoder_output_dim=24, activation_fn="gelu", no_scale_embedding=True,
        share_decoder_input_output_embed=False, decoder_normalize_before=True),
}


def text_model(seed=0, **arch):
    """A randomly initialised 3-layer fairseq transformer over a 60-symbol dictionary, in eval mode."""
    d = Dictionary()
    for i in range(56):
        d.add_symbol(f"w{i}")
    args = argparse.Namespace(encoder_embed_dim=32, encoder_ffn_embed_dim=48, encoder_attention_heads=4,
                              encoder_layers=1, decoder_embed_dim=32, decoder_ffn_embed_dim=64,
                              decoder_attention_heads=4, decoder_layers=3, dropout=0.0, **arch)
    base_architecture(args)
    task = argparse.Namespace(source_dictionary=d, target_dictionary=d)
    torch.manual_seed(seed)
    return TransformerModel.build_model(args, task).eval()


def source_batch(n=5, length=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 60, (n, length), generator=g)
    src[0, :3] = 1  # left padding (fairseq's translation default): the encoder padding mask is used
    src[3, :1] = 1
    return src, src.ne(1).sum(1)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("static_shapes", [False, True], ids=["eager", "static-shapes"])
def test_cached_steps_equal_fairseq_incremental_decoding(variant, static_shapes):
    model = text_model(**VARIANTS[variant])
    assert unsupported(model.decoder) is None
    src, lengths = source_batch()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(4, 60, (5, 12), generator=g)
    tokens[:, 0] = 2
    keep = torch.tensor([0, 2, 4])
    with torch.no_grad():
        encoder_out = model.encoder(src, src_lengths=lengths)
        state, theirs = {}, []
        for t in range(11):
            if t == 6 and not static_shapes:  # drop rows mid-way, as the rollout does for finished ones
                model.decoder.reorder_incremental_state_scripting(state, keep)
                encoder_out = model.encoder.reorder_encoder_out(encoder_out, keep)
            prefix = tokens[:, : t + 1] if t < 6 or static_shapes else tokens[keep, : t + 1]
            theirs.append(model.decoder(prefix, encoder_out=encoder_out, incremental_state=state)[0][:, -1])
        encoder_out = model.encoder(src, src_lengths=lengths)
        cached, ours = CachedDecoder(model.decoder, encoder_out, 11, static_shapes), []
        for t in range(11):
            if t == 6 and not static_shapes:
                cached.reorder(keep)
            step_tokens = tokens[:, t] if t < 6 or static_shapes else tokens[keep, t]
            ours.append(cached.step(step_tokens, torch.tensor(t) if static_shapes else t))
    for t, (a, b) in enumerate(zip(theirs, ours)):
        assert b.dtype == torch.float32 and a.shape == b.shape, t
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5, msg=f"step {t}")


def test_unsupported_decoders_fall_back_to_fairseq_decoding(caplog):
    model = text_model(scale_heads=True, decoder_normalize_before=True)
    assert "--scale-*" in unsupported(model.decoder)
    model.decoder.layers[1].c_attn.data.uniform_(0.5, 1.5)  # heads scaled unevenly: the cached step would differ
    src, lengths = source_batch()
    caps = torch.full((5,), 8)
    with caplog.at_level(logging.INFO, logger="imitkd.rollout"):
        ours = student_rollout(model, src, lengths, caps, eos=2, pad=1, decoding="cached")
    reference = student_rollout(model, src, lengths, caps, eos=2, pad=1, decoding="fairseq")
    assert torch.equal(ours, reference) and ours.ne(1).sum() > 5 * 3
    assert "rollouts use fairseq's incremental decoding: scaled attention" in caplog.text


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_rollouts_equal_fairseq_rollouts(variant):
    model = text_model(**VARIANTS[variant])
    src, lengths = source_batch(n=8, length=7, seed=3)
    caps = torch.tensor([3, 9, 5, 9, 2, 9, 7, 9])
    # rows reach their caps at different steps and are dropped from the batch (compact_frac=0)
    fairseq = student_rollout(model, src, lengths, caps, eos=2, pad=1, decoding="fairseq", compact_frac=0)
    for decoding in ("cached", "cuda-graph"):  # (cuda-graph: the cached decoder on a CPU)
        ours = student_rollout(model, src, lengths, caps, eos=2, pad=1, decoding=decoding, compact_frac=0)
        assert torch.equal(ours, fairseq), decoding
    lengths_out = fairseq.ne(1).sum(1)
    assert (lengths_out <= caps + 1).all() and lengths_out.min() < lengths_out.max()


@pytest.mark.parametrize("variant", VARIANTS)
def test_static_shape_step_never_reads_a_tensor_on_the_host(variant):
    """What a CUDA graph needs (checked here without a GPU): the static-shape step has no op that
    copies a value to the host (``.item()``, ``bool(t)``, ``nonzero``), which would break the capture."""
    from torch.profiler import profile

    model = text_model(**VARIANTS[variant])
    src, lengths = source_batch()
    with torch.no_grad():
        cached = CachedDecoder(model.decoder, model.encoder(src, src_lengths=lengths), 6, static_shapes=True)
        cached.step(torch.full((5,), 2), torch.tensor(0))  # allocates the caches (done before capture)
        with profile() as prof:
            cached.step(torch.full((5,), 7), torch.tensor(1))
    ops = {e.key for e in prof.key_averages()}
    assert "aten::addmm" in ops or "aten::mm" in ops  # the profile saw the step
    assert not ops & {"aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero"}, ops


class _CpuGraph:
    """``torch.cuda.CUDAGraph`` as a CPU stand-in: ``capture_begin``/``capture_end`` record every ATen
    call in between (with the tensors it read and wrote), ``replay`` re-runs those calls and writes
    their results into the tensors the capture produced — no Python of the captured code runs again,
    values computed on the host at capture time stay frozen, and fresh tensors made during capture
    (e.g. zero-filled) are refilled at every replay: what a CUDA graph does."""

    def __init__(self):
        self.ops, self.capture_args = [], None

    def capture_begin(self, pool=None, capture_error_mode="global"):
        from torch.utils._python_dispatch import TorchDispatchMode

        graph = self

        class Record(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                graph.ops.append((func, args, kwargs or {}, out))
                return out

        self.capture_args, self.mode = (pool, capture_error_mode), Record()
        self.mode.__enter__()

    def capture_end(self):
        self.mode.__exit__(None, None, None)

    def replay(self):
        from torch.utils._pytree import tree_leaves

        for func, args, kwargs, out in self.ops:
            result = func(*args, **kwargs)
            for old, new in zip(tree_leaves(out), tree_leaves(result)):
                if isinstance(old, torch.Tensor) and old.untyped_storage().data_ptr() != new.untyped_storage().data_ptr():
                    old.copy_(new)  # (views and in-place ops already wrote into the captured memory)


def test_graphed_step_replays_its_capture(monkeypatch):
    """``GraphedStep`` on a CPU stand-in for CUDA graphs: the captured step, replayed with only its
    input buffers refilled, gives the eager cached decoder's logits at every step; the decoder's Python
    runs twice (warm-up, capture), whatever the number of steps; every capture uses the process's one
    stream and memory pool, in thread-local capture mode."""
    import contextlib

    from imitkd import cached_decoder
    from imitkd.rollout import _NewestTokenSteps

    class Stream:
        def wait_stream(self, other):
            pass

    pools = []

    class Pool:
        def __init__(self):
            self.id = (0, len(pools) + 1)
            pools.append(self)

    for name, fake in (("CUDAGraph", _CpuGraph), ("Stream", lambda device: Stream()), ("MemPool", Pool),
                       ("stream", lambda s: contextlib.nullcontext()),
                       ("current_stream", lambda device=None: Stream()),
                       ("device", lambda d: contextlib.nullcontext())):
        monkeypatch.setattr(torch.cuda, name, fake)
    cached_decoder._capture_resources.cache_clear()
    python_steps = []
    step = CachedDecoder.step
    monkeypatch.setattr(CachedDecoder, "step", lambda self, *a: python_steps.append(1) or step(self, *a))

    model = text_model(**VARIANTS["post-norm, learned positions, embedding layer norm"])
    src, lengths = source_batch()
    tokens = torch.randint(4, 60, (5, 10), generator=torch.Generator().manual_seed(2))
    tokens[:, 0] = 2
    try:
        with torch.no_grad():
            encoder_out = model.encoder(src, src_lengths=lengths)
            eager = CachedDecoder(model.decoder, encoder_out, 10)
            want = [eager.step(tokens[:, t], t) for t in range(10)]
            python_steps.clear()
            graphed = cached_decoder.GraphedStep(CachedDecoder(model.decoder, encoder_out, 10, static_shapes=True), None)
            steps = _NewestTokenSteps(graphed)
            got = [steps(tokens[:, : t + 1], t).clone() for t in range(10)]
            again = cached_decoder.GraphedStep(CachedDecoder(model.decoder, encoder_out, 10, static_shapes=True), None)
    finally:
        cached_decoder._capture_resources.cache_clear()
    for t, (a, b) in enumerate(zip(want, got)):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5, msg=f"step {t}")
    assert len(python_steps) == 2 + 2  # warm-up and capture, for each of the two graphs
    assert len(graphed.graph.ops) > 100 and len(pools) == 1
    assert graphed.graph.capture_args == again.graph.capture_args == (pools[0].id, "thread_local")
