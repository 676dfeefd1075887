"""The wrong expert, its missing dictionaries or BPE model stop with one line naming the flag and file;
``--help`` of the console scripts lists the plugin's flags."""
import os
import re
import shutil
from types import SimpleNamespace
from pathlib import Path

import pytest

import imitkd  # noqa: F401
import toydata
from fairseq.data import Dictionary
from imitkd.errors import ImitKDError
from imitkd.expert import Expert

SPEECH_HINT = "use --criterion imit_kd_ast or imit_kd_ast_pure_kd (the expert reads the same audio), or give a text NMT expert"
TEXT_HINT = "use --criterion imit_kd_CE, imit_kd or word_kd (the expert reads the transcript), or give a speech-to-text expert"


def one_error_line(proc) -> str:
    """The message of the single ``error: ...`` line of a CLI run that exited with status 2."""
    lines = [line for line in proc.stdout.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stdout, proc.stdout[-3000:]
    return lines[0][len("error: "):]


def train_args(toy, tmp_path, criterion, expert, path=None, extra=()):
    """imitkd-train flags of a 2-update student run with this expert and --path (None: no --path)."""
    args = [str(a) for a in toydata.student_train_args(toy, criterion, tmp_path / "save", 2, extra)]
    args[args.index("--expert") + 1] = str(expert)
    i = args.index("--path")
    if path is None:
        del args[i:i + 2]
    else:
        args[i + 1] = str(path)
    return args


def test_the_kind_of_expert_is_checked_before_its_task_is_loaded(toy, toy_student):
    text = toy / "expert" / "checkpoint_best.pt"
    with pytest.raises(ImitKDError) as e:  # --path is the text expert's: the speech task would blame it
        Expert.from_checkpoints(str(toy_student), str(toy / "mt-bin"), expects="text")
    assert str(e.value) == (f"--expert {toy_student} is a speech-to-text model (task speech_to_text_kd, arch "
                            f"s2t_transformer_s): {SPEECH_HINT}")
    with pytest.raises(ImitKDError) as e:  # the student's data dir: the translation task could not set up
        Expert.from_checkpoints(str(text), str(toy / "s2t"), expects="speech")
    assert str(e.value) == f"--expert {text} is a text translation model (task translation, arch transformer): {TEXT_HINT}"
    assert len(Expert.from_checkpoints(str(toy_student), str(toy / "s2t"), expects="speech")[0].models) == 1
    assert len(Expert.from_checkpoints(str(text), str(toy / "mt-bin"), expects="text")[0].models) == 1
    with pytest.raises(ImitKDError) as e:  # every member of an ensemble, not only the first
        Expert.from_checkpoints(f"{text}{os.pathsep}{toy_student}", str(toy / "mt-bin"), expects="text")
    assert str(e.value).startswith(f"--expert {toy_student} is a speech-to-text model")


@pytest.mark.slow
def test_a_speech_expert_for_a_text_criterion(toy, toy_student, tmp_path):
    out = toydata.run("imitkd-train", *train_args(toy, tmp_path, "imit_kd_CE", toy_student, toy / "mt-bin"), check=False)
    assert one_error_line(out) == (f"--expert {toy_student} is a speech-to-text model (task speech_to_text_kd, "
                                   f"arch s2t_transformer_s): {SPEECH_HINT}")


@pytest.mark.slow
@pytest.mark.parametrize("with_path", [False, True])
def test_a_text_expert_for_a_speech_criterion(toy, tmp_path, with_path):
    text = toy / "expert" / "checkpoint_best.pt"
    args = train_args(toy, tmp_path, "imit_kd_ast", text, toy / "mt-bin" if with_path else None)
    out = toydata.run("imitkd-train", *args, check=False)
    assert one_error_line(out) == f"--expert {text} is a text translation model (task translation, arch transformer): {TEXT_HINT}"


@pytest.mark.slow
def test_path_without_the_expert_dictionaries(toy, tmp_path):
    s2t = tmp_path / "s2t-copy"  # the student's data dir: dict.de.txt, but no dict.en.txt and no binarized data
    shutil.copytree(toy / "s2t", s2t, ignore=shutil.ignore_patterns("feats"))
    out = toydata.run("imitkd-train", *train_args(toy, tmp_path, "word_kd", toy / "expert" / "checkpoint_best.pt", s2t),
                      check=False)
    assert one_error_line(out) == (f"--path {s2t} lacks the text expert's dictionaries dict.en.txt (en→de); point "
                                   "--path at the expert's fairseq-preprocess --destdir, or pass "
                                   "--expert-vocab-src/--expert-vocab-tgt")


def test_path_checks_in_process(toy, tmp_path):
    """The languages come from the binarized files of the expert's stored data dir (the checkpoint does not
    record them); a directory nothing can be learned from is named as such."""
    expert = str(toy / "expert" / "checkpoint_best.pt")
    with pytest.raises(ImitKDError, match=re.escape(f"--path {tmp_path} lacks the text expert's dictionaries "
                                                    "dict.en.txt and dict.de.txt (en→de);")):
        Expert.from_checkpoints(expert, str(tmp_path), expects="text")
    with pytest.raises(ImitKDError, match=re.escape(f"--path {tmp_path / 'nope'} is not a directory;")):
        Expert.from_checkpoints(expert, str(tmp_path / "nope"), expects="text")
    dicts_only = tmp_path / "dicts"  # the dictionaries alone suffice: languages from the stored directory
    dicts_only.mkdir()
    for lang in ("en", "de"):
        shutil.copy(toy / "mt-bin" / f"dict.{lang}.txt", dicts_only)
    assert Expert.from_checkpoints(expert, str(dicts_only), expects="text")[0].source_dictionary is not None


def expert_dicts(toy, tmp_path, edit_en=lambda lines: lines):
    """A copy of the toy expert's dictionaries, dict.en.txt's lines edited."""
    out = tmp_path / "dicts"
    out.mkdir()
    shutil.copy(toy / "mt-bin" / "dict.de.txt", out)
    lines = (toy / "mt-bin" / "dict.en.txt").read_text().splitlines(keepends=True)
    (out / "dict.en.txt").write_text("".join(edit_en(lines)))
    return out


@pytest.mark.parametrize("edit, message", [
    (lambda lines: lines[:-3], r"--path: {d}/dict\.en\.txt has (\d+) symbols, but the expert {e} has (\d+) source "
                               r"embeddings: give the dictionaries the expert was trained with"),
    (lambda lines: [], r"--path: {d}/dict\.en\.txt is an empty dictionary \(no symbols besides the special ones\)$"),
    (lambda lines: lines[:2] + ["nocount\n"] + lines[2:], r"--path: {d}/dict\.en\.txt:3 is not a fairseq dictionary "
                                                         r"\(Incorrect dictionary format, .*\"nocount\"\)$"),
], ids=["shorter", "empty", "malformed"])
def test_expert_dictionaries_that_do_not_fit_its_checkpoint(toy, tmp_path, edit, message):
    """Dictionaries shorter than the checkpoint's embeddings, empty or malformed: one line naming file and checkpoint
    (was a size-mismatch or dictionary-format traceback)."""
    expert = str(toy / "expert" / "checkpoint_best.pt")
    dicts = expert_dicts(toy, tmp_path, edit)
    with pytest.raises(ImitKDError) as e:
        Expert.from_checkpoints(expert, str(dicts), expects="text")
    match = re.match(message.format(d=re.escape(str(dicts)), e=re.escape(expert)), str(e.value))
    assert match, str(e.value)
    if match.groups():
        assert int(match[1]) == int(match[2]) - 3
    with pytest.raises(ImitKDError, match=r"^--expert-vocab-src: .*/dicts/dict\.en\.txt"):  # the flag's file alike
        Expert.from_checkpoints(expert, None, vocab_src=str(dicts / "dict.en.txt"), expects="text")


def test_one_expert_vocab_flag_alone_fills_the_other_side_as_without_flags(toy):
    """--expert-vocab-tgt alone: the source dictionary is dict.<src>.txt of the data directory, its language found
    as without the flags (was dict.None.txt); likewise --expert-vocab-src alone."""
    expert, bin_dir = str(toy / "expert" / "checkpoint_best.pt"), toy / "mt-bin"
    for flags in (dict(vocab_tgt=str(bin_dir / "dict.de.txt")), dict(vocab_src=str(bin_dir / "dict.en.txt"))):
        for data_dir in (None, str(bin_dir)):
            loaded, _ = Expert.from_checkpoints(expert, data_dir, expects="text", **flags)
            assert loaded.source_dictionary.symbols == Dictionary.load(str(bin_dir / "dict.en.txt")).symbols
            assert loaded.target_dictionary.symbols == Dictionary.load(str(bin_dir / "dict.de.txt")).symbols


def test_an_expert_sharing_all_embeddings_needs_one_joined_dictionary():
    from imitkd.expert_checks import check_dictionaries_fit

    src, tgt = Dictionary(), Dictionary()
    for w in ("a", "b"):
        src.add_symbol(w)
    for w in ("b", "a"):
        tgt.add_symbol(w)
    files = [("--expert-vocab-src", "s.txt"), ("--expert-vocab-tgt", "t.txt")]
    rows = {"source": 6, "target": 6}
    check_dictionaries_fit(SimpleNamespace(model=SimpleNamespace()), rows, files, [src, tgt], "x.pt")
    with pytest.raises(ImitKDError, match=r"^--expert-vocab-src s\.txt and --expert-vocab-tgt t\.txt differ, but the "
                                          r"expert x\.pt shares all embeddings \(--share-all-embeddings\)"):
        check_dictionaries_fit(SimpleNamespace(model=SimpleNamespace(share_all_embeddings=True)), rows, files,
                               [src, tgt], "x.pt")


def test_a_directory_as_checkpoint_is_named_as_such(tmp_path):
    from imitkd.tasks.speech_to_text_kd import load_pretrained_encoder

    with pytest.raises(ImitKDError, match=rf"^--expert: {re.escape(str(tmp_path))} is a directory, not a checkpoint"):
        Expert.from_checkpoints(str(tmp_path), None)
    with pytest.raises(ImitKDError, match=rf"^--load-pretrained-encoder-from: is a directory, not a checkpoint file: "):
        load_pretrained_encoder(None, str(tmp_path))


@pytest.mark.slow
def test_a_sentencepiece_flag_given_a_dictionary(toy, tmp_path):
    dict_txt = toy / "mt-bin" / "dict.en.txt"
    args = train_args(toy, tmp_path, "word_kd", toy / "expert" / "checkpoint_best.pt", toy / "mt-bin",
                      ["--expert-sentencepiece-model", dict_txt])
    msg = one_error_line(toydata.run("imitkd-train", *args, check=False))
    assert msg.startswith(f"--expert-sentencepiece-model {dict_txt}: not a sentencepiece model (")
    assert "could not parse ModelProto" in msg


def help_sections(text):
    """{section title: its text} of an argparse help."""
    parts = re.split(r"^(\S[^\n]*):\n", text, flags=re.M)
    return {title: body for title, body in zip(parts[1::2], parts[2::2])}


@pytest.mark.slow
def test_help_lists_the_plugin_flags_by_component():
    query = ["--task", "speech_to_text_kd", "--criterion", "imit_kd_CE", "--help"]
    plain = toydata.run("fairseq-train", *query, "--user-dir", Path(imitkd.__file__).parent)
    assert "--beta " not in plain.stdout  # fairseq's own help stops before the task and criterion add theirs

    out = toydata.run("imitkd-train", *query)
    sections = help_sections(out.stdout)
    criterion = sections["criterion (--criterion imit_kd_CE)"]
    for flag in ("--expert ", "--path ", "--beta ", "--beta-schedule ", "--rollout-topk ", "--kd-weight "):
        assert f"\n  {flag}" in "\n" + criterion, flag
    assert "\n  --expert-src-column " in "\n" + sections["Task (--task speech_to_text_kd)"]
    assert "--trust-checkpoint" in sections["imitkd"]
    assert "--max-update" in sections["optimization"]  # fairseq's own groups are still there


def test_target_dictionaries_must_be_equal_symbol_for_symbol():
    from fairseq.data import Dictionary
    from imitkd.expert_checks import check_same_dictionary

    student, expert = Dictionary(), Dictionary()
    for w in ("a", "b", "c"):
        student.add_symbol(w)
    for w in ("a", "c", "b"):
        expert.add_symbol(w)
    check_same_dictionary(student, student, "expert x.pt")
    with pytest.raises(ImitKDError, match=r"differs from the expert's \(7 symbols, expert x\.pt\) at index 5 "
                                          r"\('b' vs 'c'\); train the student on the expert's target dictionary"):
        check_same_dictionary(student, expert, "expert x.pt")
    shorter = Dictionary()
    shorter.add_symbol("a")
    with pytest.raises(ImitKDError, match=r"\(7 symbols, from .*\) differs from the expert's \(5 symbols, .*\) "
                                          r"at index 5 \('b' vs '<end>'\)"):
        check_same_dictionary(student, shorter, "expert x.pt")
