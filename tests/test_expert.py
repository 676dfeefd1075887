"""The frozen expert (``imitkd.expert``): outside the criterion's state and never trained, ensembles,
its own dtype, and its faster forward equal to fairseq's. Errors on bad experts: test_expert_errors.py."""
import torch
import torch.nn.functional as F

from fairseq import checkpoint_utils

import toydata
from toydata import EXACT


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
