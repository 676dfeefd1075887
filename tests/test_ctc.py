"""CTC on the source transcript (--ctc-weight), the `nll` criterion and the ASR → student encoder transfer."""
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import pytest

import toydata
from imitkd.ctc import ctc_greedy, ctc_log_likelihood
from imitkd.data import CTC_INPUT
from imitkd.errors import ImitKDError
from imitkd.tasks.speech_to_text_kd import load_pretrained_encoder

NO_DROPOUT = ["--dropout", "0"]


@pytest.fixture(scope="module")
def joint(toy):
    """A joint English+German dictionary for the toy corpus (transcripts and targets in one vocabulary,
    as the demo's dict.txt) and a data config using it."""
    s2t = toy / "s2t"
    words = toydata.TGT_WORDS + toydata.SRC_WORDS
    toydata.write_atomically(s2t / "dict.joint.txt", "".join(f"{w} 1\n" for w in words))
    toydata.write_atomically(s2t / "config_joint.yaml", "input_channels: 1\ninput_feat_per_channel: 80\nvocab_filename: dict.joint.txt\n")
    return ["--config-yaml", "config_joint.yaml"]


def transcripts(task, sample, split="train"):
    """The src_text of the batch's rows, in batch order."""
    texts = [r for r in task.datasets[split].dataset.src_texts]
    return [texts[i] for i in sample["id"].tolist()]


def test_nll_with_ctc_equals_hand_computation(toy, joint):
    args, task, model, crit = toydata.build_in_process(toy, "nll", [*joint, *NO_DROPOUT, "--ctc-weight", "0.3"])
    sample = toydata.first_batch(task, max_sentences=5)
    model.train()
    loss, sample_size, log = crit(model, sample)

    d = task.target_dictionary
    net_input = sample["net_input"]
    net_output = model(**net_input)
    target = sample["target"]
    ce = F.cross_entropy(net_output[0].transpose(1, 2), target, ignore_index=d.pad(), reduction="sum")
    enc = net_output[1]["encoder_out"]
    lprobs = F.log_softmax(model.encoder.ctc_proj(enc["encoder_out"][0]).float(), dim=-1)  # T×B×V
    pad_mask = enc["encoder_padding_mask"][0] if enc["encoder_padding_mask"] else None
    ctc = 0.0
    for b, text in enumerate(transcripts(task, sample)):
        ids = torch.tensor([d.index(w) for w in text.split()])
        assert d.unk() not in ids.tolist()  # the transcript is in the joint vocabulary
        frames = lprobs.size(0) - (int(pad_mask[b].sum()) if pad_mask is not None else 0)
        ctc = ctc + F.ctc_loss(lprobs[:frames, b], ids, torch.tensor([frames]), torch.tensor([len(ids)]),
                               blank=0, reduction="sum")
    torch.testing.assert_close(loss, ce + 0.3 * ctc, rtol=1e-4, atol=1e-3)
    assert sample_size == int(target.ne(d.pad()).sum())
    assert log["ctc_loss"] == pytest.approx(float(ctc), rel=1e-4)
    assert CTC_INPUT in sample and sample[CTC_INPUT]["src_tokens"].size(0) == target.size(0)


def test_ctc_gradient_reaches_the_encoder_and_head(toy, joint):
    args, task, model, crit = toydata.build_in_process(toy, "nll", [*joint, *NO_DROPOUT, "--ctc-weight", "1.0"])
    sample = toydata.first_batch(task, max_sentences=4)
    model.train()
    loss, _, _ = crit(model, sample)
    loss.backward()
    assert model.encoder.ctc_proj.weight.grad.abs().sum() > 0
    assert model.encoder.transformer_layers[0].fc1.weight.grad.abs().sum() > 0


def test_ctc_greedy_merges_repeats_then_drops_blanks_within_each_length():
    """Best path of a hand-built T×B×V: frames (argmax) row 0 = 3 3 0 3 4 4 | 5 (beyond its length 6),
    row 1 = 0 2 2 0 0 | 1 1 (length 5): labels [3, 3, 4] and [2]; scores = summed argmax log-probs."""
    frames = [[3, 3, 0, 3, 4, 4, 5], [0, 2, 2, 0, 0, 1, 1]]
    logits = torch.full((7, 2, 6), -5.0)
    for b, row in enumerate(frames):
        for t, label in enumerate(row):
            logits[t, b, label] = 5.0
    lprobs = logits.log_softmax(-1)
    labels, scores = ctc_greedy(lprobs, torch.tensor([6, 5]), blank=0)
    assert labels == [[3, 3, 4], [2]]
    best = lprobs.max(-1).values  # T×B
    assert torch.allclose(scores, torch.stack([best[:6, 0].sum(), best[:5, 1].sum()]))


def test_ctc_log_likelihood_sums_every_alignment_and_rules_out_what_none_gives():
    """log p_CTC(y|x) against brute force: every one of the V^T frame paths of a random T×N×V, collapsed
    (repeats merged, then blanks dropped), its probability added to the label sequence it gives."""
    import itertools

    torch.manual_seed(0)
    lprobs = torch.randn(4, 5, 3).log_softmax(-1)
    lengths = torch.tensor([4, 4, 3, 4, 2])
    labels = [[1, 2], [1, 1], [2], [1, 1, 1], [2, 1]]  # [1, 1, 1] needs 5 frames (a blank between repeats)
    got = ctc_log_likelihood(lprobs, lengths, labels)
    for n, (y, frames) in enumerate(zip(labels, lengths.tolist())):
        total = 0.0
        for path in itertools.product(range(3), repeat=frames):
            merged = [c for i, c in enumerate(path) if i == 0 or c != path[i - 1]]
            if [c for c in merged if c != 0] == y:
                total += float(sum(lprobs[t, n, c] for t, c in enumerate(path)).exp())
        expected = torch.tensor(total).log()
        assert (got[n] == float("-inf")) if total == 0 else torch.isclose(got[n], expected, atol=1e-5), (y, got[n], expected)
    assert got[3] == float("-inf") and torch.isfinite(got[[0, 1, 2, 4]]).all()


def test_joint_decoding_keeps_the_best_joint_score_among_the_nbest_and_the_best_path(toy, joint):
    """``joint_decode`` on a batch: teacher-forced attention scores equal fairseq's beam-search scores of
    the same hypotheses (so joint_decode takes the beam's own and teacher-forces only the best path), and
    each row's pick has the highest λ·CTC + (1−λ)·attention + b·length among the beam's hypotheses and the
    CTC best path, recomputed here one row at a time by teacher forcing."""
    from fairseq.dataclass.configs import GenerationConfig
    from omegaconf import OmegaConf

    from imitkd.joint_decoding import attention_log_likelihood, joint_decode

    _, task, model, _ = toydata.build_in_process(toy, "nll", [*joint, "--ctc-weight", "0.3"])
    model.eval()
    sample = toydata.first_batch(task, max_sentences=4)
    d = task.target_dictionary
    generator = task.build_generator([model], OmegaConf.structured(GenerationConfig(beam=3, nbest=3, max_len_b=20)))
    net_input = {k: v for k, v in sample["net_input"].items() if k != "prev_output_tokens"}
    with torch.inference_mode():
        hypos = task.inference_step(generator, [model], sample)
        enc = model.encoder(**net_input)
        lprobs, lengths = model.get_ctc_output([None, {"encoder_out": enc}], None)
        paths, _ = ctc_greedy(lprobs, lengths)
        beams = [[h["tokens"][:-1].tolist() for h in row] for row in hypos]
        order = torch.tensor([b for b, row in enumerate(beams) for _ in row])
        att = attention_log_likelihood(model, enc, order, [y for row in beams for y in row], d.pad(), d.eos())
        fairseq_scores = torch.tensor([float(h["positional_scores"].sum()) for row in hypos for h in row])
        torch.testing.assert_close(att, fairseq_scores, rtol=1e-4, atol=1e-4)
        extra_paths = 0
        for lam, bonus in ((0.0, 0.0), (0.5, 1.0), (1.0, 0.0)):
            picks = joint_decode(model, task, generator, sample, lam, bonus, {d.pad(), d.eos()}, d.pad(), d.eos())
            assert len(picks) == len(beams)
            for b, (labels, score) in enumerate(picks):
                path = [t for t in paths[b] if t not in (d.pad(), d.eos())]  # an untrained head emits them too
                cands = beams[b] + ([path] if path and path not in beams[b] else [])
                extra_paths += len(cands) - len(beams[b])
                assert labels in cands
                one = torch.tensor([b] * len(cands))
                a = attention_log_likelihood(model, enc, one, cands, d.pad(), d.eos())
                c = ctc_log_likelihood(lprobs[:, [b] * len(cands)], lengths[[b] * len(cands)], cands)
                joint_scores = [(lam * ci if lam else 0.0) + (1 - lam) * ai + bonus * len(y)
                                for y, ai, ci in zip(cands, a.tolist(), c.tolist())]
                assert score == pytest.approx(max(joint_scores), abs=1e-3)
                assert score == pytest.approx(joint_scores[cands.index(labels)], abs=1e-3)
        assert extra_paths > 0  # some best path is not in its row's n-best: the teacher-forced branch ran


def test_word_kd_with_ctc_adds_the_transcript_term(toy):
    """A KD criterion with the expert's own (non-joint) target dictionary: CTC reads another column."""
    extra = ["--expert-dtype", "fp32", *NO_DROPOUT]
    _, task, model, crit = toydata.build_in_process(toy, "word_kd", extra + ["--ctc-weight", "0.5",
                                                                             "--ctc-src-column", "tgt_text"])
    sample = toydata.first_batch(task, max_sentences=4)
    model.train()
    loss, _, log = crit(model, sample)
    plain = toydata.build_in_process(toy, "word_kd", extra)[3]
    plain_loss, _, plain_log = plain(model, sample)  # the same model and batch without the CTC term
    assert "ctc_loss" not in plain_log and log["ctc_loss"] > 0
    torch.testing.assert_close(loss, plain_loss + 0.5 * log["ctc_loss"], rtol=1e-4, atol=1e-3)


def test_ctc_needs_a_speech_student_head(toy, joint):
    _, task, model, crit = toydata.build_in_process(toy, "nll", [*joint, "--ctc-weight", "0.3"])
    model.encoder.ctc_proj = None
    sample = toydata.first_batch(task, max_sentences=2)
    model.train()
    with pytest.raises(ImitKDError, match="CTC head"):
        crit(model, sample)


def test_pretrained_encoder_transfer_with_and_without_ctc_head(toy, joint, tmp_path):
    from fairseq import checkpoint_utils

    _, _, asr, _ = toydata.build_in_process(toy, "nll", [*joint, "--ctc-weight", "0.3"])
    path = tmp_path / "asr.pt"
    history = [{"criterion_name": "nll", "optimizer_name": "adam", "lr_scheduler_state": {"best": None},
                "num_updates": 0}]
    checkpoint_utils.torch_persistent_save({"model": asr.state_dict(), "cfg": None, "optimizer_history": history,
                                            "extra_state": {}}, str(path))
    for ctc in ("0.3", "0"):
        _, _, student, _ = toydata.build_in_process(toy, "nll", [*joint, "--ctc-weight", ctc])
        load_pretrained_encoder(student, str(path))  # the ASR's CTC head is left out where there is none
        for name, tensor in student.encoder.state_dict().items():
            torch.testing.assert_close(tensor, asr.encoder.state_dict()[name])
        assert (student.encoder.ctc_proj is None) == (ctc == "0")
    no_head = tmp_path / "no_head.pt"  # a pretrained encoder without a head: the student's starts fresh
    state = {k: v for k, v in asr.state_dict().items() if "ctc_proj" not in k}
    checkpoint_utils.torch_persistent_save({"model": state, "cfg": None, "optimizer_history": history,
                                            "extra_state": {}}, str(no_head))
    _, _, student, _ = toydata.build_in_process(toy, "nll", [*joint, "--ctc-weight", "0.3"])
    head = student.encoder.ctc_proj.weight.detach().clone()
    load_pretrained_encoder(student, str(no_head))
    torch.testing.assert_close(student.encoder.ctc_proj.weight, head)
    torch.testing.assert_close(student.encoder.transformer_layers[0].fc1.weight, asr.encoder.transformer_layers[0].fc1.weight)
    _, _, wider, _ = toydata.build_in_process(toy, "nll", [*joint, "--encoder-ffn-embed-dim", "48"])
    with pytest.raises(ImitKDError, match="does not fit the student's.*other shape"):
        load_pretrained_encoder(wider, str(path))
    with pytest.raises(ImitKDError, match="not found"):
        load_pretrained_encoder(wider, str(tmp_path / "missing.pt"))


def test_asr_then_student_through_the_cli(toy, joint, tmp_path):
    """The original recipe in miniature: an ASR model (speech → transcript, CTC on the transcript),
    then an ImitKD student whose encoder starts from it and stays frozen for the first updates."""
    s2t = toy / "s2t"
    for split in ("train", "dev"):
        lines = (s2t / f"{split}.tsv").read_text().splitlines()
        head = lines[0].split("\t")
        rows = [dict(zip(head, line.split("\t"))) for line in lines[1:]]
        for r in rows:
            r["tgt_text"] = r["src_text"]
        toydata.write_atomically(s2t / f"{split}_asr.tsv", "\n".join(["\t".join(head)] + ["\t".join(r[h] for h in head) for r in rows]) + "\n")
    asr_dir = tmp_path / "asr"
    args = toydata.student_train_args(toy, "nll", asr_dir, 40, [*joint, "--ctc-weight", "0.5", "--train-subset",
                                                                "train_asr", "--valid-subset", "dev_asr"])
    out = toydata.run("imitkd-train", *args).stdout
    assert "ctc_loss" in out
    # its CTC head transcribes dev in fairseq-generate's format (one T/H/D triple per utterance, by id)
    script = Path(__file__).resolve().parents[1] / "examples" / "imitkd" / "ctc_transcribe.py"
    ctc = subprocess.run([sys.executable, str(script), str(s2t), "--config-yaml", "config_joint.yaml", "--gen-subset",
                          "dev_asr", "--path", str(asr_dir / "checkpoint_last.pt"), "--cpu"],
                         capture_output=True, text=True, timeout=300)
    assert ctc.returncode == 0, ctc.stderr[-2000:]
    dev = [line.split("\t") for line in (s2t / "dev_asr.tsv").read_text().splitlines()]
    refs = {i: row[dev[0].index("tgt_text")] for i, row in enumerate(dev[1:])}
    lines = ctc.stdout.splitlines()
    assert len(lines) == 3 * len(refs) and {line[:2] for line in lines} == {"T-", "H-", "D-"}
    assert {int(x.split("\t")[0][2:]): x.split("\t")[1] for x in lines if x.startswith("T-")} == refs
    for line in lines:
        if line[:2] in ("H-", "D-"):
            _, score, text = line.split("\t")
            assert float(score) <= 0 and set(text.split()) <= set(toydata.SRC_WORDS + toydata.TGT_WORDS)
    # jointly (attention 3-best and the best path, rescored): the same format, one transcript per utterance
    both = subprocess.run([sys.executable, str(script), str(s2t), "--config-yaml", "config_joint.yaml", "--gen-subset",
                           "dev_asr", "--path", str(asr_dir / "checkpoint_last.pt"), "--cpu", "--joint-beam", "3"],
                          capture_output=True, text=True, timeout=300)
    assert both.returncode == 0, both.stderr[-2000:]
    joint_lines = both.stdout.splitlines()
    assert len(joint_lines) == 3 * len(refs)
    assert {int(x.split("\t")[0][2:]) for x in joint_lines if x.startswith("D-")} == set(refs)
    for line in joint_lines:
        if line.startswith("D-"):
            assert set(line.split("\t")[2].split()) <= set(toydata.SRC_WORDS + toydata.TGT_WORDS)
    bad = subprocess.run([sys.executable, str(script), str(s2t), "--config-yaml", "config_joint.yaml", "--gen-subset",
                          "dev_asr", "--path", str(asr_dir / "checkpoint_last.pt"), "--joint-beam", "3",
                          "--joint-ctc-weight", "1.5"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == "error: --joint-ctc-weight must be in [0, 1] (got 1.5)"
    missing = subprocess.run([sys.executable, str(script), str(s2t), "--config-yaml", "config_joint.yaml",
                              "--gen-subset", "dev_asr", "--path", str(tmp_path / "none.pt")],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in missing.stderr
    student_dir = tmp_path / "student"
    args = toydata.student_train_args(toy, "nll", student_dir, 10, [
        *joint, "--ctc-weight", "0.5", "--load-pretrained-encoder-from", asr_dir / "checkpoint_last.pt",
        "--encoder-freezing-updates", "5"])
    out = toydata.run("imitkd-train", *args).stdout
    assert "loaded pretrained encoder from" in out
    assert (student_dir / "checkpoint_last.pt").is_file()
