"""Task speech_to_text_kd: the expert's input in the batch, encoded with the expert's own pipeline."""
from argparse import Namespace

import sentencepiece as spm
import torch
from fairseq import tasks
from fairseq.data import Dictionary

import toydata
from imitkd.expert import SourceEncoder


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


def test_source_encoder_uses_fairseq_bpe_and_tokenizer(tmp_path):
    text = "This package contains the decoder's shared library, version 2.0."
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join([text, "The library decodes audio and video.", "Shared files for the package."] * 30))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=40,
                                   model_type="unigram", bos_id=0, pad_id=1, eos_id=2, unk_id=3)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    d = Dictionary()
    for i in range(4, sp.get_piece_size()):
        d.add_symbol(sp.id_to_piece(i))
    enc = SourceEncoder.build(d, sentencepiece_model=str(tmp_path / "sp.model"))
    ids = enc.encode(text)
    assert d.string(ids[:-1]) == " ".join(sp.encode(text, out_type=str)) and ids[-1] == d.eos()
    assert d.unk() not in ids.tolist()

    codes = tmp_path / "codes"
    codes.write_text("#version: 0.2\nd e\nde c\nl i\nli b\n")
    moses = SourceEncoder.build(Dictionary(), tokenizer="moses", bpe="subword_nmt", bpe_codes=str(codes))
    assert moses.tokenizer.encode("decoder's library.") == "decoder &apos;s library ."
    assert moses.bpe.encode("decoder library") == "dec@@ o@@ de@@ r lib@@ r@@ a@@ r@@ y"


def test_empty_transcript_cell_is_reported_with_file_and_row(tmp_path):
    import pytest
    from imitkd.data import read_text_column
    from imitkd.errors import ImitKDError

    (tmp_path / "train.tsv").write_text("id\taudio\tn_frames\ttgt_text\tsrc_text\n"
                                        "a\tx.npy\t5\thallo\thello\nb\ty.npy\t5\twelt\t \n")
    with pytest.raises(ImitKDError, match=r"train\.tsv: row 3 \(id=b\) has an empty 'src_text'"):
        read_text_column(str(tmp_path), "train", "src_text", "criterion imit_kd_CE")
    assert read_text_column(str(tmp_path), "train", "tgt_text", "x") == ["hallo", "welt"]
