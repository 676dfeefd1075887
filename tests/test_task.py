"""Task speech_to_text_kd: the expert's input in the batch, encoded with the expert's own pipeline."""
from argparse import Namespace

import torch
from fairseq import tasks

import toydata


def test_batch_carries_expert_tokens_in_batch_order_and_student_inputs_untouched(toy):
    args, task, model, crit = toydata.build_in_process(toy, "imit_kd_CE")
    sample = toydata.first_batch(task, max_sentences=8)
    ds = task.dataset("train")
    src_dict = crit.expert.source_dictionary
    for row, idx in enumerate(sample["id"].tolist()):
        n = int(sample["expert_input"]["src_lengths"][row])
        tokens = sample["expert_input"]["src_tokens"][row]
        assert src_dict.string(tokens[: n - 1]) == ds.inputs["expert_input"][0][idx]  # the transcript of *this* row
        assert tokens[n - 1] == src_dict.eos() and tokens[n:].eq(src_dict.pad()).all()

    plain = tasks.setup_task(Namespace(**{**vars(args), "task": "speech_to_text"}))
    plain.load_dataset("train")
    ref = plain.dataset("train").collater([plain.dataset("train")[i] for i in sample["id"].tolist()])
    for key in ("src_tokens", "src_lengths", "prev_output_tokens"):
        assert torch.equal(sample["net_input"][key], ref["net_input"][key])
    assert torch.equal(sample["target"], ref["target"]) and set(sample["net_input"]) == set(ref["net_input"])


def test_empty_transcript_cell_is_reported_with_file_and_row(tmp_path):
    import pytest
    from imitkd.data import read_text_columns
    from imitkd.errors import ImitKDError

    (tmp_path / "train.tsv").write_text("id\taudio\tn_frames\ttgt_text\tsrc_text\n"
                                        "a\tx.npy\t5\thallo\thello\nb\ty.npy\t5\twelt\t \n")
    with pytest.raises(ImitKDError, match=r"train\.tsv: row 3 \(id=b\) has an empty 'src_text'"):
        read_text_columns(str(tmp_path), "train", [("src_text", "criterion imit_kd_CE")])
    assert read_text_columns(str(tmp_path), "train", [("tgt_text", "x")]) == {"tgt_text": ["hallo", "welt"]}



def test_text_inputs_read_each_manifest_once_per_split(toy, monkeypatch):
    """The expert's source and the CTC transcript (both src_text here) come from one read of dev.tsv;
    the CTC transcript is encoded with the target dictionary, the expert's with the expert's own."""
    import imitkd.data
    from imitkd.data import CTC_INPUT, EXPERT_INPUT

    args, task, model, crit = toydata.build_in_process(toy, "imit_kd_CE", ["--ctc-weight", "0.3"])
    assert {key: column for key, (column, _, _) in task.text_inputs.items()} == {CTC_INPUT: "src_text",
                                                                               EXPERT_INPUT: "src_text"}
    task.load_dataset("dev")
    reads = []
    read = imitkd.data.read_manifest
    monkeypatch.setattr(imitkd.data, "read_manifest", lambda path: reads.append(path.name) or read(path))
    dataset = task._with_text_inputs("dev", task.datasets["dev"])
    assert reads == ["dev.tsv"]
    (ctc_texts, ctc_encoder), (expert_texts, expert_encoder) = dataset.inputs[CTC_INPUT], dataset.inputs[EXPERT_INPUT]
    assert ctc_texts == expert_texts == list(dataset.dataset.src_texts)
    assert ctc_encoder.dictionary is task.target_dictionary
    assert expert_encoder.dictionary is crit.expert.source_dictionary


def test_a_missing_text_column_names_the_manifest_and_who_reads_it(toy):
    import pytest
    from imitkd.errors import ImitKDError

    with pytest.raises(ImitKDError, match=r"dev\.tsv: no 'asr_text' column \(columns: id, audio, n_frames, tgt_text, "
                                          r"speaker, src_text\); --ctc-weight reads it"):
        toydata.build_in_process(toy, "imit_kd_CE", ["--ctc-weight", "0.3", "--ctc-src-column", "asr_text"],
                                 split="dev")


def test_eval_bleu_logs_zero_for_empty_hypotheses():
    """A student that decodes dev to empty strings scores BLEU 0 (fairseq's --best-checkpoint-metric bleu
    needs the key); without --eval-bleu statistics nothing is logged."""
    from fairseq import metrics

    from imitkd.tasks import bleu

    empty = {"_bleu_sys_len": 0, "_bleu_ref_len": 12, **{f"_bleu_counts_{i}": 0 for i in range(4)},
             **{f"_bleu_totals_{i}": 0 for i in range(4)}}
    with metrics.aggregate() as agg:
        bleu.reduce_metrics([empty])
        assert agg.get_smoothed_values()["bleu"] == 0
    with metrics.aggregate() as agg:
        bleu.reduce_metrics([{}])
        assert "bleu" not in agg.get_smoothed_values()
