"""Loading a checkpoint never runs code (imitkd.checkpoints): refused through the real CLIs, every
checkpoint fairseq-train writes still loads, the opt-out is explicit, broken files give one line."""
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import imitkd  # noqa: F401  (routes fairseq's checkpoint loading through imitkd.checkpoints)
import toydata
from fairseq import checkpoint_utils
from imitkd import checkpoints
from imitkd.errors import ImitKDError
from imitkd.expert import Expert


class RunsCode:
    """Pickles as the call ``open(marker, "w")``: a full unpickle creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def one_error_line(proc) -> str:
    """The message of the single ``error: ...`` line of a CLI run that exited with status 2."""
    lines = [line for line in proc.stdout.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stdout, proc.stdout[-3000:]
    return lines[0][len("error: "):]


def with_extra(src, dst, **extra_state):
    """A copy of checkpoint ``src`` (loaded trusted: we wrote it) with objects added to its extra_state."""
    state = torch.load(src, weights_only=False)
    state.setdefault("extra_state", {}).update(extra_state)
    torch.save(state, dst)
    return dst


@pytest.fixture
def evil(toy, tmp_path):
    """A real expert checkpoint that also pickles a call creating ``marker``; returns (ckpt, marker)."""
    marker = tmp_path / "MARKER"
    return with_extra(toy / "expert" / "checkpoint_best.pt", tmp_path / "evil.pt", payload=RunsCode(marker)), marker


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--expert", "--restore-file", "--load-pretrained-encoder-from"])
def test_code_in_a_checkpoint_is_refused_by_the_cli(toy, tmp_path, evil, flag):
    ckpt, marker = evil
    args = [str(a) for a in toydata.student_train_args(toy, "word_kd", tmp_path / "save", 2)]
    if flag == "--expert":
        args[args.index("--expert") + 1] = str(ckpt)
    else:
        args += [flag, str(ckpt)]
    msg = one_error_line(toydata.run("imitkd-train", *args, check=False))
    assert msg == (f"refusing to load checkpoint {ckpt}: it pickles io.open, which is not among the types fairseq "
                   "checkpoints need (unpickling it could run code); if you trust this file, rerun with "
                   "--trust-checkpoint (imitkd-* scripts) or IMITKD_TRUST_CHECKPOINTS=1 (fairseq-* with --user-dir)")
    assert not marker.exists()
    torch.load(ckpt, weights_only=False)  # the payload is live: a full unpickle runs it
    assert marker.exists()


def test_every_checkpoint_training_writes_loads_safely(toy, toy_student, tmp_path):
    """Text and speech models, best and last (with optimizer state), fp16/bf16 weights, ensembles."""
    files = [toy / "expert" / "checkpoint_best.pt", toy / "expert" / "checkpoint_last.pt",
             toy_student, toy_student.parent / "checkpoint_last.pt"]
    for f in files:
        assert set(torch.serialization.get_unsafe_globals_in_checkpoint(str(f))) <= checkpoints.ALLOWED_NAMES
        with pytest.raises(Exception, match="Weights only load failed"):
            torch.load(f)  # torch's bare default refuses them: the allowlist is what makes them load
        state = checkpoint_utils.load_checkpoint_to_cpu(str(f))
        assert state["model"] and state["cfg"].task._name in ("translation", "speech_to_text_kd")
    last = checkpoint_utils.load_checkpoint_to_cpu(str(files[3]))
    assert all(torch.is_tensor(s["exp_avg"]) for s in last["last_optimizer_state"]["state"].values())

    for dtype in (torch.float16, torch.bfloat16):
        state = torch.load(files[0], weights_only=False)
        state["model"] = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state["model"].items()}
        torch.save(state, tmp_path / "half.pt")
        loaded = checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "half.pt"))
        assert {v.dtype for v in loaded["model"].values() if v.is_floating_point()} == {dtype}

    expert, _ = Expert.from_checkpoints(f"{files[0]}{os.pathsep}{files[1]}", str(toy / "mt-bin"), dtype="fp32")
    assert len(expert.models) == 2


@pytest.mark.slow
def test_checkpoints_of_runs_with_eval_bleu_load_safely(toy, tmp_path):
    """--eval-bleu stores its n-gram counts as numpy arrays in the metrics state: int64 (fairseq's
    translation task: a text expert), float64 (speech_to_text_kd: a student)."""
    bleu = ["--eval-bleu", "--eval-bleu-args", '{"beam": 1}', "--best-checkpoint-metric", "bleu",
            "--maximize-best-checkpoint-metric"]
    toydata.run("fairseq-train", toy / "mt-bin", *toydata.EXPERT_ARCH, *toydata.COMMON, "--optimizer", "adam",
                "--lr", "0.005", "--criterion", "label_smoothed_cross_entropy", "--max-tokens", "1000",
                "--max-update", 2, "--required-batch-size-multiple", "1", "--save-dir", tmp_path / "expert", *bleu)
    toydata.run("imitkd-train", *toydata.student_train_args(toy, "word_kd", tmp_path / "student", 2, bleu))
    for run, dtype in (("expert", np.int64), ("student", np.float64)):
        ckpt = tmp_path / run / "checkpoint_last.pt"
        assert "numpy.ndarray" in torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt))
        state = checkpoint_utils.load_checkpoint_to_cpu(str(ckpt))
        arrays = [m[3]["val"] for m in state["extra_state"]["metrics"]["valid"] if isinstance(m[3].get("val"), np.ndarray)]
        assert arrays and all(a.dtype == dtype for a in arrays), (run, [a.dtype for a in arrays])


def old_style(src, dst):
    """A checkpoint pickling more than fairseq-train writes today: its cfg as an omegaconf object."""
    state = torch.load(src, weights_only=False)
    state["cfg"] = OmegaConf.create(state["cfg"], flags={"allow_objects": True})
    torch.save(state, dst)
    return dst


@pytest.mark.slow
def test_the_opt_out_loads_an_old_style_checkpoint(toy, toy_student, tmp_path):
    student = old_style(toy_student, tmp_path / "old_student.pt")
    generate = ["imitkd-generate", toy / "s2t", "--task", "speech_to_text_kd", "--config-yaml", "config.yaml",
                "--gen-subset", "test", "--path", student, "--beam", "1", "--batch-size", "10", "--cpu"]
    refused = one_error_line(toydata.run(*generate, check=False))
    assert refused.startswith(f"refusing to load checkpoint {student}: it pickles omegaconf.dictconfig.DictConfig,")

    trusted = toydata.run(*generate, "--trust-checkpoint")
    assert sum(line.startswith("H-") for line in trusted.stdout.splitlines()) == toydata.SPLITS["test"]
    assert re.search(rf"WARNING.*loading checkpoint {re.escape(str(student))} by full pickle", trusted.stdout)

    expert = old_style(toy / "expert" / "checkpoint_best.pt", tmp_path / "old_expert.pt")
    args = [str(a) for a in toydata.student_train_args(toy, "word_kd", tmp_path / "save", 1)]
    args[args.index("--expert") + 1] = str(expert)
    env = {**os.environ, checkpoints.TRUST_ENV: "1"}
    out = toydata.run("fairseq-train", *args, "--user-dir", Path(imitkd.__file__).parent, env=env)
    assert "done training" in out.stdout
    assert re.search(rf"WARNING.*loading checkpoint {re.escape(str(expert))} by full pickle", out.stdout)


def _legacy_bytes(ckpt):
    buf = io.BytesIO()
    torch.save(torch.load(ckpt, weights_only=False), buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


@pytest.mark.parametrize("kind, expected", [
    ("empty", "the file is empty"),
    ("head", "its zip archive ends early (no central directory)"),
    ("tail", "its zip archive ends early (no central directory)"),
    ("text", "it is neither a torch zip archive nor a legacy torch file"),
    ("legacy", "its legacy torch pickle ends early"),
])
def test_broken_files_give_one_line(toy, tmp_path, kind, expected):
    data = (toy / "expert" / "checkpoint_best.pt").read_bytes()
    content = {"empty": b"", "head": data[:1000], "tail": data[:-100], "text": b"id\taudio\n",
               "legacy": _legacy_bytes(toy / "expert" / "checkpoint_best.pt")[:-10]}[kind]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    with pytest.raises(ImitKDError) as e:
        checkpoint_utils.load_checkpoint_to_cpu(str(bad))
    assert str(e.value) == (f"checkpoint {bad} is truncated or not a checkpoint: {expected} ({len(content)} bytes; "
                            "still being written, or an interrupted copy?)")


@pytest.mark.slow
def test_truncated_expert_and_corrupt_checkpoint_last_stop_the_cli(toy, tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    args = [str(a) for a in toydata.student_train_args(toy, "word_kd", tmp_path / "save", 2)]
    args[args.index("--expert") + 1] = str(empty)
    msg = one_error_line(toydata.run("imitkd-train", *args, check=False))
    assert msg == (f"checkpoint {empty} is truncated or not a checkpoint: the file is empty (0 bytes; still being "
                   "written, or an interrupted copy?)")

    save = tmp_path / "resume"
    save.mkdir()
    (save / "checkpoint_last.pt").write_bytes((toy / "expert" / "checkpoint_best.pt").read_bytes()[:1000])
    out = toydata.run("imitkd-train", *toydata.student_train_args(toy, "word_kd", save, 2), check=False)
    assert one_error_line(out) == (f"checkpoint {save / 'checkpoint_last.pt'} is truncated or not a checkpoint: its "
                                   "zip archive ends early (no central directory) (1000 bytes; still being written, "
                                   "or an interrupted copy?)")
