"""int8 linear layers (``--expert-dtype int8``, ``--rollout-dtype int8``, opt-in on x86 CPUs with fbgemm;
``auto`` never picks them): the scheme is torch's dynamic quantisation, greedy rollouts and the expert's next-token
distributions stay close to fp32, the rollouts track the student's current weights, and the flags."""
import pytest
import torch
import torch.nn.functional as F

import toydata
from imitkd import precision
from imitkd.cached_decoder import CachedDecoder
from imitkd.errors import ImitKDError
from imitkd.expert import Expert
from imitkd.rollout import student_rollout
from toydata import EXACT, load_student

pytestmark = pytest.mark.skipif(not precision.int8_available(), reason="torch without fbgemm (x86) int8 kernels")

#: bounds checked below on the toy expert/student (trained; their near-ties are where int8 can flip a token)
MIN_AGREEMENT = 0.99  #: greedy tokens equal to fp32's
MAX_MEAN_KL = 0.005  #: nats, KL(expert fp32 ‖ expert int8) per target position, mean
MAX_KL = 0.1  #: nats, the same, worst position


def test_int8_linear_is_torchs_dynamic_quantisation():
    from torch.ao.quantization import quantize_dynamic

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(48, 96), torch.nn.ReLU(), torch.nn.Linear(96, 40))
    x = torch.randn(7, 3, 48)
    with torch.no_grad():
        theirs = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)(x)
        int8 = precision.Int8Weights(model)
        with int8.swapped_in(model):
            ours = model(x)
        assert type(model[0]) is torch.nn.Linear  # restored
        assert torch.equal(ours, theirs)
        assert torch.equal(int8.linear(model[2], torch.relu(int8.linear(model[0], x))), theirs)


def _batches(task, split, size=32):
    ds = task.dataset(split)
    return [ds.collater([ds[i] for i in range(s, min(len(ds), s + size))]) for s in range(0, len(ds), size)]


def _agreement(a, b, pad=1):
    width = max(a.size(1), b.size(1))
    a, b = (F.pad(t, (0, width - t.size(1)), value=pad) for t in (a, b))
    mask = a.ne(pad)
    return int((a.eq(b) & mask).sum()), int(mask.sum())


@pytest.fixture(scope="module")
def trained(toy, toy_student):
    _, task, model, _ = toydata.build_in_process(toy, "imit_kd_CE", EXACT)
    load_student(model, toy_student)
    task.load_dataset("dev")
    return task, model


def test_int8_rollouts_agree_with_fp32(trained):
    """Free-running greedy rollouts (a flipped near-tie changes the rest of its row) on the training set,
    and each step's token given the fp32 prefix on train + dev."""
    task, model = trained
    same = total = 0
    for sample in _batches(task, "train"):
        ni = sample["net_input"]
        caps = torch.full((ni["src_tokens"].size(0),), 40)
        fp32 = student_rollout(model, ni["src_tokens"], ni["src_lengths"], caps, eos=2, pad=1)
        int8 = student_rollout(model, ni["src_tokens"], ni["src_lengths"], caps, eos=2, pad=1, int8=True)
        s, t = _agreement(fp32, int8)
        same, total = same + s, total + t
    assert same / total >= MIN_AGREEMENT, f"{same}/{total}"
    same = total = 0
    model.eval()
    with torch.no_grad():
        for sample in _batches(task, "train") + _batches(task, "dev"):
            ni = sample["net_input"]
            caps = torch.full((ni["src_tokens"].size(0),), 40)
            rollout = student_rollout(model, ni["src_tokens"], ni["src_lengths"], caps, eos=2, pad=1)
            prev = torch.cat([torch.full_like(rollout[:, :1], 2), rollout], 1)
            enc = model.encoder(ni["src_tokens"], src_lengths=ni["src_lengths"])
            steps = [CachedDecoder(model.decoder, enc, rollout.size(1), int8=q) for q in (False, True)]
            for t in range(rollout.size(1)):
                a, b = (s.step(prev[:, t], t) for s in steps)
                assert not torch.equal(a, b)  # (int8 products really ran)
                mask = rollout[:, t].ne(1)
                a[:, 1] = b[:, 1] = -torch.inf
                same += int((a.argmax(-1).eq(b.argmax(-1)) & mask).sum())
                total += int(mask.sum())
    assert same / total >= MIN_AGREEMENT, f"{same}/{total}"


def test_int8_rollouts_track_the_students_current_weights(toy, toy_student, trained):
    """The int8 copy is made at every rollout: once the (same) student module has been trained, its int8
    rollouts follow its new fp32 ones, not the untrained ones. Compared row by row over the training set:
    in a free-running rollout one flipped near-tie changes the rest of its row (at fdc06ee, on an AVX-512
    VNNI CPU, one of 16 rows did so at its second token: 117 of 122 tokens agreed), so a token share over a
    few rows measures the machine's near-ties, not the copy."""
    task, _ = trained
    _, _, model, _ = toydata.build_in_process(toy, "imit_kd_CE", EXACT)  # untrained
    samples = [s["net_input"] for s in _batches(task, "train", 16)]

    def rollouts(**kw):
        return [student_rollout(model, ni["src_tokens"], ni["src_lengths"], torch.full((ni["src_tokens"].size(0),), 30),
                                eos=2, pad=1, **kw) for ni in samples]

    before = rollouts(int8=True)
    load_student(model, toy_student)  # copies into the same parameters, as an optimizer step does
    after32, after8 = rollouts(), rollouts(int8=True)
    rows = sum(a.size(0) for a in after32)
    assert rows >= 64
    assert _same_rows(after32, after8) >= 0.9 * rows, f"{_same_rows(after32, after8)}/{rows}"
    assert _same_rows(after32, before) <= 0.1 * rows, f"{_same_rows(after32, before)}/{rows}"


def _same_rows(a_batches, b_batches, pad=1):
    """How many rows of the rollouts in ``a_batches`` equal those of ``b_batches`` token for token."""
    same = 0
    for a, b in zip(a_batches, b_batches):
        width = max(a.size(1), b.size(1))
        a, b = (F.pad(t, (0, width - t.size(1)), value=pad) for t in (a, b))
        same += int(a.eq(b).all(1).sum())
    return same


def test_int8_expert_distribution_within_kl(toy, trained):
    task, _ = trained
    ck, data = str(toy / "expert" / "checkpoint_best.pt"), str(toy / "mt-bin")
    fp32, _ = Expert.from_checkpoints(ck, data, dtype="fp32")
    int8, _ = Expert.from_checkpoints(ck, data, dtype="int8")
    kls, same, total = [], 0, 0
    for sample in _batches(task, "train") + _batches(task, "dev"):
        ei, prev = sample["expert_input"], sample["net_input"]["prev_output_tokens"]
        a = torch.log_softmax(fp32.scores(ei["src_tokens"], ei["src_lengths"], prev).float(), -1)
        b = torch.log_softmax(int8.scores(ei["src_tokens"], ei["src_lengths"], prev).float(), -1)
        mask = prev.ne(1)
        kls.append((a.exp() * (a - b)).sum(-1)[mask])
        same += int((a.argmax(-1).eq(b.argmax(-1)) & mask).sum())
        total += int(mask.sum())
    kl = torch.cat(kls)
    assert int8.int8 and int8.dtype == torch.float32 and not fp32.int8
    assert type(int8.models[0].decoder.output_projection) is precision.Int8Linear
    assert kl.mean() <= MAX_MEAN_KL and kl.max() <= MAX_KL, (float(kl.mean()), float(kl.max()))
    assert same / total >= MIN_AGREEMENT


def test_auto_never_picks_int8(monkeypatch):
    """int8 is opt-in: its speed-up on an AVX2 CPU did not reproduce between quiet runs (benchmarks/README.md)."""
    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
        assert not precision.int8("auto", cpu)
        assert precision.resolve("auto", cpu) == (torch.bfloat16 if native else torch.float32)
        assert precision.int8("int8", cpu) and precision.resolve("int8", cpu) == torch.float32
        assert not precision.int8("fp32", cpu) and not precision.int8("bf16", cpu)
        assert precision.describe("auto", cpu) == ("bf16" if native else "fp32")
        assert precision.describe("int8", cpu) == "int8 linear layers (fp32 elsewhere)"
    monkeypatch.setattr(precision, "int8_available", lambda: False)
    with pytest.raises(ImitKDError, match="int8"):
        precision.int8("int8", cpu)


def test_int8_flag_validation(toy):
    assert "int8" in precision.CHOICES
    assert not precision.int8("auto", torch.device("cuda"))  # GPUs: bf16 where native, else fp32
    with pytest.raises(ImitKDError, match=r"int8 .*x86 CPUs"):
        precision.int8("int8", torch.device("cuda"))
    for flag in ("--expert-dtype", "--rollout-dtype"):
        _, _, _, crit = toydata.build_in_process(toy, "imit_kd_CE", [flag, "int8"])
        assert getattr(crit.cfg, flag[2:].replace("-", "_")) == "int8"
        with pytest.raises(SystemExit):
            toydata.build_in_process(toy, "imit_kd_CE", [flag, "int4"])


def test_rollouts_from_the_training_encoder_pass(toy, trained):
    """--rollout-encoder training: one encoder pass (the training forward's, detached) serves the rollouts
    and the loss; without dropout it gives the same loss and gradients as --rollout-encoder own."""
    task, trained_model = trained
    sample = _batches(task, "train", 8)[0]
    sample["update_num"] = 0
    flags = EXACT + ["--beta", "0", "--beta-schedule", "constant"]
    results = []
    for encoder in ("own", "training"):
        _, _, model, crit = toydata.build_in_process(toy, "imit_kd_CE", flags + ["--rollout-encoder", encoder])
        model.load_state_dict(trained_model.state_dict())
        model.train()
        calls = []
        model.encoder.register_forward_hook(lambda *a: calls.append(1))
        loss, _, log = crit(model, sample)
        loss.backward()
        results.append((loss.detach(), log["rollout_rows"], len(calls),
                        model.decoder.output_projection.weight.grad.clone()))
    (own, rows_own, calls_own, g_own), (shared, rows_shared, calls_shared, g_shared) = results
    assert rows_own == rows_shared == 8 and (calls_own, calls_shared) == (2, 1)
    torch.testing.assert_close(shared, own, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_shared, g_own, rtol=1e-4, atol=1e-6)
