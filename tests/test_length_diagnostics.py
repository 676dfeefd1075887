"""examples/imitkd/length_diagnostics.py: its stopping-point arithmetic against hand computations, and its
one-line errors (the end-to-end run on a demo's output is in tests/test_demo.py)."""
import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "imitkd"))
import length_diagnostics as diag  # noqa: E402

EOS, PAD = 2, 1


def scores_with_argmax(argmax):
    """B×T×V scores whose argmax is ``argmax`` (B×T)."""
    argmax = torch.tensor(argmax)
    return torch.nn.functional.one_hot(argmax, 6).float()


def test_first_eos_counts_prefix_tokens_and_falls_back_to_the_prefix_length():
    prev = torch.tensor([[EOS, 4, 5, 4, PAD],   # 3 prefix tokens
                         [EOS, 4, 5, 4, 5],     # 4 prefix tokens
                         [EOS, 4, PAD, PAD, PAD]])
    argmax = [[4, 5, EOS, 4, EOS],  # </s> after 2 tokens (the one under PAD does not count)
              [4, 4, 4, 4, 4],      # never: the prefix's own length, 4
              [4, 5, EOS, EOS, EOS]]  # only under padding: never, 1
    assert diag.first_eos(scores_with_argmax(argmax), prev, EOS, PAD).tolist() == [2.0, 4.0, 1.0]


def test_mean_first_half_averages_the_first_ceil_half_positions():
    p = torch.tensor([[0.1, 0.3, 0.5, 0.7, 0.9],
                      [0.2, 0.4, 0.6, 0.8, 1.0]])
    got = diag.mean_first_half(p, torch.tensor([5, 1]))  # 3 positions; 1 position
    assert got.tolist() == pytest.approx([0.3, 0.2])


def test_not_a_demo_directory_is_one_line_error(tmp_path, capsys):
    assert diag.main(["--demo", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --demo {tmp_path}: not a finished run_demo.py output")


def test_unknown_student_is_one_line_error(tmp_path, capsys):
    (tmp_path / "students" / "nll").mkdir(parents=True)
    (tmp_path / "students" / "nll" / "checkpoint_best.pt").write_bytes(b"")
    (tmp_path / "config.yaml").write_text("")
    assert diag.main(["--demo", str(tmp_path), "--students", "nll,imit_kd"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --students: no checkpoint_best.pt for imit_kd in {tmp_path / 'students'} (have: nll)"]


def fake_demo(root):
    """What the checks before the work look at: students/<key>/checkpoint_best.pt, config.yaml, corpus/dev.tsv."""
    (root / "students" / "nll").mkdir(parents=True)
    (root / "students" / "nll" / "checkpoint_best.pt").write_bytes(b"")
    (root / "config.yaml").write_text("input_channels: 1\n")
    (root / "corpus").mkdir()
    (root / "corpus" / "dev.tsv").write_text("id\taudio\tn_frames\ttgt_text\n")
    return root


def test_json_never_replaces_an_input_and_is_checked_first(tmp_path, capsys):
    demo = fake_demo(tmp_path)
    for target, problem in [(demo / "config.yaml", "exists and is not an output of length_diagnostics.py"),
                            (demo / "nodir" / "out.json", f"directory {demo / 'nodir'} does not exist"),
                            (demo / "students", "is a directory")]:
        assert diag.main(["--demo", str(demo), "--json", str(target)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: --json {target}: {problem}"), err
    assert (demo / "config.yaml").read_text() == "input_channels: 1\n"
    earlier = demo / "out.json"
    earlier.write_text(json.dumps({"nll": dict(dict.fromkeys(diag.FIELDS, 0.5), sentences=3)}))
    assert diag.json_problem(earlier) is None  # an earlier output may be replaced
    assert diag.json_problem(demo / "new.json") is None


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script, inside fairseq's import
@pytest.mark.parametrize("a, b", [("-1", "-5"), ("0", "0")])
def test_rollout_cap_the_criterion_rejects_is_one_line_error(tmp_path, capsys, a, b):
    demo = fake_demo(tmp_path)
    assert diag.main(["--demo", str(demo), "--rollout-max-len-a", a, "--rollout-max-len-b", b]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --rollout-max-len-a/--rollout-max-len-b must be >= 0, finite and not both 0, got {float(a)} / {int(b)}"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script, inside fairseq's import
def test_relative_demo_and_corpus_reach_fairseq_as_absolute_paths(tmp_path, capsys, monkeypatch):
    """fairseq resolves a relative config_yaml against the data directory (--corpus)."""
    from fairseq import checkpoint_utils

    fake_demo(tmp_path / "demo")
    monkeypatch.chdir(tmp_path)
    seen = []

    def load(path, overrides):
        seen.append(overrides)
        return {"cfg": argparse.Namespace(criterion=argparse.Namespace())}  # no expert: stops after loading

    monkeypatch.setattr(checkpoint_utils, "load_checkpoint_to_cpu", load)
    assert diag.main(["--demo", "demo", "--corpus", "demo/corpus"]) == 2
    assert "no distilled student" in capsys.readouterr().err
    demo = Path.cwd() / "demo"
    assert seen == [{"data": str(demo / "corpus"), "config_yaml": str(demo / "config.yaml")}]
