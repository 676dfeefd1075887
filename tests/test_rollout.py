"""Student rollouts (``imitkd.rollout``): greedy decoding equal to fairseq's SequenceGenerator,
per-sentence length caps, sampling, and the mixing of rollouts into the gold prefixes."""
import pytest
import torch

from fairseq.sequence_generator import SequenceGenerator

import toydata
from imitkd.rollout import mix_prefixes, student_rollout
from toydata import load_student


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
