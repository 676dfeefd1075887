"""The distillation criterion in-process, on the toy corpus with the fairseq-trained toy expert."""
import torch
import torch.nn.functional as F
import pytest

from fairseq import checkpoint_utils
from fairseq.sequence_generator import SequenceGenerator

import toydata
from imitkd.rollout import mix_prefixes, student_rollout

#: deterministic fp32: comparisons with hand computations and fairseq's SequenceGenerator
EXACT = ["--dropout", "0", "--expert-dtype", "fp32", "--rollout-dtype", "fp32"]


def load_student(model, ckpt):
    state = checkpoint_utils.load_checkpoint_to_cpu(str(ckpt))
    model.load_state_dict(state["model"])
    return model


def hand_ce(model, expert, sample, prev):
    """−Σ_v softmax(expert)·log_softmax(student) summed over non-pad prefix positions, from scratch."""
    with torch.no_grad():
        e = expert.models[0](sample["expert_input"]["src_tokens"], sample["expert_input"]["src_lengths"], prev)[0]
    s = model(sample["net_input"]["src_tokens"], sample["net_input"]["src_lengths"], prev)[0]
    ce = -(F.softmax(e.float(), -1) * F.log_softmax(s.float(), -1)).sum(-1)
    return (ce * prev.ne(1)).sum()


def test_word_kd_equals_hand_computation_on_two_sentences(toy):
    args, task, model, crit = toydata.build_in_process(toy, "word_kd", EXACT)
    lengths = task.dataset("train").dataset.tgt_lens
    short = next(i for i in range(1, 50) if lengths[i] != lengths[0])
    sample = toydata.batch_of(task, [0, short])
    assert sample["nsentences"] == 2 and sample["target"].ne(1).sum(1).unique().numel() == 2  # lengths differ
    model.train()
    loss, sample_size, log = crit(model, sample)
    prev = sample["net_input"]["prev_output_tokens"]
    torch.testing.assert_close(loss, hand_ce(model, crit.expert, sample, prev), rtol=1e-5, atol=1e-5)
    assert sample_size == sample["ntokens"] == int(prev.ne(1).sum())
    assert log["rollout_rows"] == 0 and log["beta_sum"] == 2


def test_padding_contributes_nothing(toy):
    args, task, model, crit = toydata.build_in_process(toy, "word_kd", EXACT)
    sample = toydata.first_batch(task, max_sentences=4)
    model.train()
    loss, size, _ = crit(model, sample)
    grads = torch.autograd.grad(loss, [p for p in model.parameters()], allow_unused=True)
    widened = dict(sample, net_input=dict(sample["net_input"]), target=F.pad(sample["target"], (0, 7), value=1))
    widened["net_input"]["prev_output_tokens"] = F.pad(sample["net_input"]["prev_output_tokens"], (0, 7), value=1)
    loss2, size2, _ = crit(model, widened)
    grads2 = torch.autograd.grad(loss2, [p for p in model.parameters()], allow_unused=True)
    assert size2 == size
    torch.testing.assert_close(loss2, loss, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, grads2):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_imit_kd_ce_at_beta_one_equals_word_kd(toy):
    _, task, model, kd = toydata.build_in_process(toy, "word_kd", EXACT)
    _, _, _, imit = toydata.build_in_process(toy, "imit_kd_CE", EXACT + ["--beta", "1", "--beta-schedule", "constant"])
    sample = dict(toydata.first_batch(task), update_num=5)
    model.train()
    l1, s1, _ = kd(model, sample)
    g1 = torch.autograd.grad(l1, list(model.parameters()))
    l2, s2, log2 = imit(model, sample)
    g2 = torch.autograd.grad(l2, list(model.parameters()))
    assert s1 == s2 and log2["rollout_rows"] == 0
    torch.testing.assert_close(l1, l2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_imit_kd_ce_on_rollouts_equals_hand_computation_with_sequence_generator(toy, toy_student):
    """β = 0: every prefix is the student's greedy output; rebuild it with fairseq's SequenceGenerator
    and compute the loss by hand."""
    flags = EXACT + ["--beta", "0", "--beta-schedule", "constant", "--rollout-max-len-a", "0", "--rollout-max-len-b", "40"]
    _, task, model, crit = toydata.build_in_process(toy, "imit_kd_CE", flags)
    load_student(model, toy_student)
    sample = dict(toydata.first_batch(task, max_sentences=6), update_num=0)
    model.train()
    loss, sample_size, log = crit(model, sample)

    gen = SequenceGenerator([model], task.target_dictionary, beam_size=1, max_len_a=0, max_len_b=40)
    model.eval()
    hyps = gen.generate([model], sample)
    model.train()
    tokens = [h[0]["tokens"] for h in hyps]
    prev = torch.full((len(tokens), max(len(t) for t in tokens)), 1, dtype=torch.long)
    for i, t in enumerate(tokens):
        prev[i, 0], prev[i, 1:len(t)] = 2, t[:-1]
    assert log["rollout_rows"] == 6 and sample_size == int(prev.ne(1).sum()) == log["rollout_tokens"]
    torch.testing.assert_close(loss, hand_ce(model, crit.expert, sample, prev), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("decoding", ["cached", "fairseq"])
def test_greedy_rollouts_equal_sequence_generator(toy, toy_student, decoding):
    _, task, model, crit = toydata.build_in_process(toy, "imit_kd_CE")
    load_student(model, toy_student)
    sample = toydata.first_batch(task, split="train", max_sentences=16)
    rows = torch.tensor([1, 4, 5, 9, 15])
    ni = sample["net_input"]
    ours = student_rollout(model, ni["src_tokens"][rows], ni["src_lengths"][rows], torch.full((5,), 30), eos=2, pad=1,
                           decoding=decoding)
    model.eval()
    sub = {"net_input": {"src_tokens": ni["src_tokens"][rows], "src_lengths": ni["src_lengths"][rows]}}
    hyps = SequenceGenerator([model], task.target_dictionary, beam_size=1, max_len_a=0, max_len_b=30).generate([model], sub)
    for i, h in enumerate(hyps):
        ref = h[0]["tokens"]
        assert torch.equal(ours[i, : len(ref)], ref) and ours[i, len(ref):].eq(1).all()
    assert ours.ne(1).sum() > 5 * 3  # real sentences, not just EOS


def test_rollouts_respect_per_sentence_caps_and_sampling_topk1_is_greedy(toy):
    _, task, model, _ = toydata.build_in_process(toy, "imit_kd_CE")  # untrained: runs to the cap
    sample = toydata.first_batch(task, max_sentences=3)
    ni = sample["net_input"]
    caps = torch.tensor([2, 5, 3])
    greedy = student_rollout(model, ni["src_tokens"], ni["src_lengths"], caps, eos=2, pad=1)
    lengths = greedy.ne(1).sum(1)
    assert (lengths <= caps + 1).all() and greedy.gather(1, (lengths - 1)[:, None]).eq(2).all()
    torch.manual_seed(0)
    sampled = student_rollout(model, ni["src_tokens"], ni["src_lengths"], caps, eos=2, pad=1, sample=True, topk=1)
    assert torch.equal(sampled, greedy)
    assert model.training  # restored


def test_mix_prefixes_moves_eos_to_front():
    gold = torch.tensor([[2, 5, 6, 7], [2, 8, 9, 1], [2, 4, 1, 1]])
    roll = torch.tensor([[10, 11, 12, 13, 2], [14, 2, 1, 1, 1]])
    mixed = mix_prefixes(gold, roll, torch.tensor([2, 0]), eos=2, pad=1)
    assert mixed.tolist() == [[2, 14, 1, 1, 1], [2, 8, 9, 1, 1], [2, 10, 11, 12, 13]]


def test_rollouts_only_for_selected_rows(toy):
    _, task, model, crit = toydata.build_in_process(toy, "imit_kd_CE", ["--beta", "0.5", "--beta-schedule", "constant"])
    seen = []
    model.encoder.register_forward_hook(
        lambda m, args, kwargs, out: seen.append((torch.is_grad_enabled(), (args or [kwargs["src_tokens"]])[0].size(0))),
        with_kwargs=True)
    sample = dict(toydata.first_batch(task), update_num=3)
    model.train()
    torch.manual_seed(3)
    _, _, log = crit(model, sample)
    no_grad_rows = [n for grad, n in seen if not grad]
    assert 0 < log["rollout_rows"] < sample["nsentences"]
    assert no_grad_rows == [log["rollout_rows"]]


def test_expert_is_frozen_in_eval_and_outside_the_criterion_state(toy):
    _, task, model, crit = toydata.build_in_process(toy, "imit_kd_CE")
    expert = crit.expert.models[0]
    crit.train()
    model.train()
    assert not expert.training and all(not p.requires_grad for p in expert.parameters())
    assert list(crit.parameters()) == [] and crit.state_dict() == {}
    sample = dict(toydata.first_batch(task), update_num=0)
    loss, _, _ = crit(model, sample)
    loss.backward()
    assert not expert.training and all(p.grad is None for p in expert.parameters())
    # deterministic: no dropout in the expert even while everything else trains
    s1 = crit.expert.scores(sample["expert_input"]["src_tokens"], sample["expert_input"]["src_lengths"], sample["net_input"]["prev_output_tokens"])
    s2 = crit.expert.scores(sample["expert_input"]["src_tokens"], sample["expert_input"]["src_lengths"], sample["net_input"]["prev_output_tokens"])
    assert torch.equal(s1, s2)


def test_validation_is_gold_nll(toy):
    _, task, model, crit = toydata.build_in_process(toy, "imit_kd", ["--beta", "0", "--beta-schedule", "constant"])
    sample = toydata.first_batch(task)
    model.eval()
    with torch.no_grad():
        loss, size, log = crit(model, sample)
        lp = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True)
    nll = -lp.gather(-1, sample["target"][..., None]).squeeze(-1)
    assert size == sample["ntokens"]
    torch.testing.assert_close(loss, (nll * sample["target"].ne(1)).sum(), rtol=1e-5, atol=1e-4)


def test_ensemble_averages_probabilities(toy, toy_student):
    from imitkd.expert import Expert
    ck = str(toy / "expert" / "checkpoint_best.pt")
    single, _ = Expert.from_checkpoints(ck, str(toy / "mt-bin"), dtype="fp32")
    double, _ = Expert.from_checkpoints(f"{ck}:{ck}", str(toy / "mt-bin"), dtype="fp32")
    src = torch.tensor([[4, 5, 6, 2]]); prev = torch.tensor([[2, 7, 8]])
    torch.testing.assert_close(F.softmax(double.scores(src, torch.tensor([4]), prev), -1),
                               F.softmax(single.scores(src, torch.tensor([4]), prev), -1), rtol=1e-5, atol=1e-6)
    assert len(double.models) == 2


def test_expert_in_bf16_follows_the_student_device_and_agrees_with_fp32(toy):
    from imitkd.expert import Expert
    ck, data = str(toy / "expert" / "checkpoint_best.pt"), str(toy / "mt-bin")
    fp32, _ = Expert.from_checkpoints(ck, data, dtype="fp32")
    bf16, _ = Expert.from_checkpoints(ck, data, dtype="bf16")
    src, lengths, prev = torch.tensor([[4, 5, 6, 7, 2]]), torch.tensor([5]), torch.tensor([[2, 7, 8, 9]])
    a, b = fp32.scores(src, lengths, prev), bf16.scores(src, lengths, prev)
    assert a.dtype == torch.float32 and b.dtype == torch.bfloat16
    assert next(bf16.models[0].parameters()).dtype == torch.bfloat16
    torch.testing.assert_close(F.softmax(b.float(), -1), F.softmax(a, -1), rtol=0, atol=0.05)


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


def test_expert_forward_equals_the_models_own_forward(toy, toy_student):
    """The expert's faster path (contiguous layer inputs and output projection) gives fairseq's own
    forward of the same checkpoint, for a text transformer expert and for a speech (s2t) expert."""
    from imitkd.expert import Expert
    _, task, _, _ = toydata.build_in_process(toy, "imit_kd_CE", EXACT)
    sample = toydata.first_batch(task, max_sentences=4)
    prev, ei, ni = sample["net_input"]["prev_output_tokens"], sample["expert_input"], sample["net_input"]
    for ckpt, data, src, lengths in ((toy / "expert" / "checkpoint_best.pt", toy / "mt-bin", ei["src_tokens"], ei["src_lengths"]),
                                     (toy_student, toy / "s2t", ni["src_tokens"], ni["src_lengths"])):
        expert, _ = Expert.from_checkpoints(str(ckpt), str(data), dtype="fp32")
        plain = checkpoint_utils.load_model_ensemble([str(ckpt)], arg_overrides={"data": str(data)})[0][0].eval()
        with torch.no_grad():
            torch.testing.assert_close(expert.scores(src, lengths, prev), plain(src, lengths, prev)[0], rtol=1e-5, atol=1e-5)


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
