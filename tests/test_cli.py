"""End to end through the console scripts and plain fairseq-train --user-dir (subprocesses)."""
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch

import toydata

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def valid_losses(log):
    return [float(x) for x in re.findall(r"valid on 'dev' subset \| loss ([\d.]+)", log)]


def logged(log, key):
    """{num_updates: value} from train_inner lines (--log-interval 1)."""
    out = {}
    for line in log.splitlines():
        if "train_inner" in line and f"{key}=" in line:
            out[int(re.search(r"num_updates=(\d+)", line).group(1))] = float(re.search(rf"{key}=([\d.e-]+)", line).group(1))
    return out


def test_word_kd_train_resume_generate(toy, tmp_path):
    save = tmp_path / "ckpt"
    first = toydata.run("imitkd-train", *toydata.student_train_args(toy, "word_kd", save, 30, [
        "--kd-weight", "0.8", "--label-smoothing", "0.1", "--eval-bleu", "--eval-bleu-args", '{"beam": 2}',
        "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric"]))
    bleus = [float(b) for b in re.findall(r"valid on 'dev' subset .*\| bleu ([\d.]+)", first.stdout)]
    assert len(bleus) >= 5 and max(bleus) > bleus[0] and "best_bleu" in first.stdout
    resumed = toydata.run("imitkd-train", *toydata.student_train_args(toy, "word_kd", save, 45, ["--kd-weight", "0.8", "--label-smoothing", "0.1"]))
    assert "Loaded checkpoint" in resumed.stdout and "@ 30 updates" in resumed.stdout
    losses = valid_losses(first.stdout) + valid_losses(resumed.stdout)
    assert losses[-1] < losses[0] - 0.5
    assert "expert_accuracy" in first.stdout and "ppl" in first.stdout

    gen = toydata.run("imitkd-generate", toy / "s2t", "--task", "speech_to_text_kd", "--config-yaml", "config.yaml",
                      "--gen-subset", "test", "--path", save / "checkpoint_last.pt", "--beam", "2",
                      "--batch-size", "6", "--cpu")  # 20 sentences, batches of 6: fairseq main would drop the last 2
    hyps = [l for l in gen.stdout.splitlines() if l.startswith("H-")]
    assert len(hyps) == toydata.SPLITS["test"] and "Translated 20 sentences" in gen.stdout

    state = torch.load(save / "checkpoint_last.pt", weights_only=False)
    assert not state.get("criterion")  # no expert weights in the checkpoint
    n_student = sum(1 for k in state["model"])
    assert not any("expert" in k for k in state["model"])
    adam_state = state["last_optimizer_state"]["state"]
    student_params = sum(p.numel() for k, p in state["model"].items() if not k.endswith((".version", "_float_tensor")))
    assert sum(s["exp_avg"].numel() for s in adam_state.values()) == student_params  # expert not optimised
    assert n_student > 0


def test_plain_fairseq_train_with_user_dir(toy, tmp_path):
    for exe in ("fairseq-train", "imitkd-train"):  # the console script preloads the plugin: no duplicates
        out = toydata.run(exe, *toydata.student_train_args(toy, "kd_expert_copy", tmp_path / exe, 3),
                          "--user-dir", REPO / "imitkd")
        assert "done training" in out.stdout and "duplicate" not in out.stdout


@pytest.mark.parametrize("criterion", ["imit_kd_CE", "imit_kd", "word_kd", "imit_kd_ast", "imit_kd_ast_pure_kd", "nll"])
def test_each_criterion_lowers_dev_loss(toy, toy_student, tmp_path, criterion):
    extra = ["--beta-decay-updates", "30"]
    args = toydata.student_train_args(toy, criterion, tmp_path / "ckpt", 30, extra)
    if criterion.startswith("imit_kd_ast"):  # a *speech* expert reading the same audio
        i = args.index("--expert")
        args[i + 1:i + 2] = [toy_student]
        del args[args.index("--path"):args.index("--path") + 2]
    out = toydata.run("imitkd-train", *args)
    losses = valid_losses(out.stdout)
    assert len(losses) >= 5 and losses[-1] < losses[0] - 0.3, losses
    if criterion in ("imit_kd_CE", "imit_kd", "imit_kd_ast"):
        assert "rollout_frac" in out.stdout and "rollout_len" in out.stdout


def test_beta_is_exact_after_resume(toy, tmp_path):
    """β, and with it the whole update (data order, rollout rows, sampled rollouts, dropout), is the same
    after a resume: fairseq reseeds torch with seed + num_updates before every update and restores the
    data iterator's position, and every random draw of ours comes from that generator."""
    flags = ["--log-interval", "1", "--beta-decay-updates", "12", "--rollout", "sample", "--rollout-topk", "5",
             "--validate-interval-updates", "3"]
    straight = toydata.run("imitkd-train", *toydata.student_train_args(toy, "imit_kd_CE", tmp_path / "a", 12, flags))
    toydata.run("imitkd-train", *toydata.student_train_args(toy, "imit_kd_CE", tmp_path / "b", 6, flags))
    resumed = toydata.run("imitkd-train", *toydata.student_train_args(toy, "imit_kd_CE", tmp_path / "b", 12, flags))
    beta_straight, beta_resumed = logged(straight.stdout, "beta"), logged(resumed.stdout, "beta")
    assert sorted(beta_resumed) == list(range(7, 13))
    for k in range(7, 13):
        assert beta_resumed[k] == pytest.approx(beta_straight[k], abs=1e-4)
        assert beta_resumed[k] == pytest.approx(200 ** (-(k - 1) / 12), abs=1e-4)
    for key in ("loss", "rollout_frac", "rollout_len"):
        straight_values, resumed_values = logged(straight.stdout, key), logged(resumed.stdout, key)
        assert {k: straight_values[k] for k in range(7, 13)} == resumed_values, key


def test_two_process_data_parallel_applies_beta_on_both_workers(toy, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [str(a) for a in toydata.student_train_args(toy, "imit_kd_CE", tmp_path / "ddp", 6, ["--log-interval", "1"])]
    procs = [subprocess.Popen([str(toydata.VENV_BIN / "imitkd-train"), *args, "--distributed-world-size", "2",
                               "--distributed-rank", str(rank), "--distributed-init-method", f"tcp://127.0.0.1:{port}",
                               "--distributed-no-spawn", "--distributed-backend", "gloo", "--device-id", "0",
                               "--ddp-backend", "legacy_ddp"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "distributed init (rank 1)" in logs[0] + logs[1]
    betas = logged(logs[0], "beta")
    assert sorted(betas) == list(range(1, 7))
    for k, b in betas.items():  # logged β = Σ_workers β·bsz / Σ bsz: equals the schedule only if both applied it
        assert b == pytest.approx(200 ** (-(k - 1) / 6), abs=1e-4)
    assert max(logged(logs[0], "rollout_frac").values()) > 0


def test_bad_inputs_fail_with_one_line(toy, tmp_path):
    data = tmp_path / "s2t"
    shutil.copytree(toy / "s2t", data, ignore=shutil.ignore_patterns("feats"))
    for split in ("train", "dev"):  # drop the src_text column
        rows = [l.rsplit("\t", 1)[0] for l in (data / f"{split}.tsv").read_text().splitlines()]
        (data / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    args = [str(a) for a in toydata.student_train_args(toy, "imit_kd_CE", tmp_path / "x", 3)]
    args[0] = str(data)
    out = toydata.run("imitkd-train", *args, check=False)
    assert out.returncode == 2
    assert re.search(r"^error: .*dev\.tsv: no 'src_text' column", out.stdout, re.M) and "Traceback" not in out.stdout

    out = toydata.run("imitkd-train", *[a if a != "speech_to_text_kd" else "speech_to_text" for a in
                                         map(str, toydata.student_train_args(toy, "imit_kd_CE", tmp_path / "y", 3))], check=False)
    assert out.returncode == 2 and "needs --task speech_to_text_kd" in out.stdout

    out = toydata.run("imitkd-train", *toydata.student_train_args(toy, "imit_kd_CE", tmp_path / "z", 3, ["--beta", "1.5"]), check=False)
    assert out.returncode == 2 and re.search(r"^error: --beta must be in \[0, 1\], got 1.5$", out.stdout, re.M)

    bad_dict = tmp_path / "s2t-dict"
    shutil.copytree(toy / "s2t", bad_dict, ignore=shutil.ignore_patterns("feats"))
    lines = (bad_dict / "dict.de.txt").read_text().splitlines()
    (bad_dict / "dict.de.txt").write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    args[0] = str(bad_dict)
    out = toydata.run("imitkd-train", *args, check=False)
    assert out.returncode == 2 and "differs from the expert's" in out.stdout and "at index 4" in out.stdout


def test_cascade_nmt_student_reads_asr_transcripts(toy, tmp_path):
    """imit_pipeline_nmt_training: a text student reads a (noisy) ASR column, the expert the gold one."""
    data = tmp_path / "s2t"
    shutil.copytree(toy / "s2t", data, ignore=shutil.ignore_patterns("feats"))
    for split in ("train", "dev", "test"):
        lines = (data / f"{split}.tsv").read_text().splitlines()
        out = [lines[0] + "\tasr_text"]
        for i, line in enumerate(lines[1:]):
            words = line.split("\t")[-1].split()
            if i % 2:  # a recognition error every other row
                words[i % len(words)] = "blue"
            out.append(f"{line}\t{' '.join(words)}")
        (data / f"{split}.tsv").write_text("\n".join(out) + "\n")
    args = [str(a) for a in toydata.student_train_args(toy, "imit_pipeline_nmt_training", tmp_path / "ckpt", 40)]
    args[0] = str(data)
    args[args.index("s2t_transformer_s")] = "transformer"
    del args[args.index("--conv-channels"):args.index("--conv-channels") + 2]
    text_student = ["--student-src-column", "asr_text", "--student-src-dict", str(toy / "mt-bin" / "dict.en.txt")]
    out = toydata.run("imitkd-train", *args, *text_student)
    losses = valid_losses(out.stdout)
    assert losses[-1] < losses[0] - 0.5 and "rollout_frac" in out.stdout
    gen = toydata.run("imitkd-generate", data, "--task", "speech_to_text_kd", "--config-yaml", "config.yaml",
                      "--gen-subset", "test", "--path", tmp_path / "ckpt" / "checkpoint_last.pt", "--beam", "2",
                      "--batch-size", "8", "--cpu", *text_student)
    assert sum(l.startswith("H-") for l in gen.stdout.splitlines()) == toydata.SPLITS["test"]

    no_column = toydata.run("imitkd-train", *args, check=False)
    assert no_column.returncode == 2 and "reads text: set --student-src-column" in no_column.stdout
