"""Text → token ids (``imitkd.text_encoding``): fairseq's tokenizers and BPEs, as fairseq-interactive
applies them. Bad BPE flags: test_expert_errors.py; the encoded columns in the batch: test_task.py."""
import sentencepiece as spm
from fairseq.data import Dictionary

from imitkd.text_encoding import SourceEncoder


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


def test_bpe_flags_missing_or_unusable_files_fail_naming_the_flag(tmp_path):
    import pytest
    from imitkd.errors import ImitKDError

    with pytest.raises(ImitKDError, match=r"^--expert-bpe subword_nmt needs --bpe-codes FILE \(got None\)$"):
        SourceEncoder.build(Dictionary(), bpe="subword_nmt")
    with pytest.raises(ImitKDError, match=r"^--expert-bpe sentencepiece needs --expert-sentencepiece-model FILE"):
        SourceEncoder.build(Dictionary(), bpe="sentencepiece", sentencepiece_model=str(tmp_path / "missing.model"))
    not_a_model = tmp_path / "dict.txt"
    not_a_model.write_text("hello 1\n")
    with pytest.raises(ImitKDError, match=rf"^--expert-sentencepiece-model {not_a_model}: not a sentencepiece model \("):
        SourceEncoder.build(Dictionary(), sentencepiece_model=str(not_a_model))


def test_no_flags_and_no_stored_config_encode_words_as_they_are():
    d = Dictionary()
    hello = d.add_symbol("hello")
    enc = SourceEncoder.build(d)
    assert enc.tokenizer is None and enc.bpe is None
    assert enc.encode("hello world").tolist() == [hello, d.unk(), d.eos()]
