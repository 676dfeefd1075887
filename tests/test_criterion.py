"""The distillation criterion in-process, on the toy corpus with the fairseq-trained toy expert:
its loss against hand computations, β, which rows are rolled out, validation."""
import pytest
import torch
import torch.nn.functional as F

from fairseq.sequence_generator import SequenceGenerator

import toydata
from toydata import EXACT, load_student

from imitkd.criterions.distillation import DistillationConfig, check_config
from imitkd.errors import ImitKDError


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


@pytest.mark.parametrize("flag, value", [
    ("ctc_weight", "nan"), ("ctc_weight", "inf"), ("rollout_temperature", "nan"), ("rollout_temperature", "inf"),
    ("rollout_max_len_a", "nan"), ("rollout_max_len_a", "inf"), ("beta_base", "nan"), ("beta_base", "inf"),
    ("kd_weight", "nan"), ("beta", "nan"), ("label_smoothing", "nan"),
    ("beta_sigmoid_slope", "nan"), ("beta_sigmoid_slope", "inf"),
])
def test_nan_and_inf_fail_the_range_checks(flag, value):
    """NaN passes a check written ``x < 0`` (and infinity one written ``x <= 0``): each names its flag and value."""
    schedule = "inverse_sigmoid" if flag == "beta_sigmoid_slope" else "exponential"
    cfg = DistillationConfig(max_update=100, sentence_avg=False, beta_schedule=schedule, **{flag: float(value)})
    with pytest.raises(ImitKDError, match=rf"--{flag.replace('_', '-')}\b.* got {value}\b"):
        check_config(cfg, rollouts=True)
