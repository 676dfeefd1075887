"""Checkpoint averaging (imitkd/averaging.py): the mean against a hand computation, the order of a
save directory's interval checkpoints, and one-line errors for checkpoints that cannot be averaged."""
import pytest
import torch

from imitkd import averaging
from imitkd.errors import ImitKDError


def _save(path, weight, steps=0, dtype=torch.float32):
    torch.save({"model": {"w": torch.tensor(weight, dtype=dtype), "steps": torch.tensor(steps)},
                "last_optimizer_state": {"state": {}}, "extra_state": {"n": steps}}, path)
    return path


def test_mean_of_three_checkpoints(tmp_path):
    paths = [_save(tmp_path / f"checkpoint_1_{u}.pt", [float(u), 1.0], steps=u) for u in (100, 200, 600)]
    avg = averaging.average_checkpoints(paths)
    assert torch.allclose(avg["model"]["w"], torch.tensor([300.0, 1.0]))
    assert avg["model"]["steps"].item() == 600  # integer buffer: the newest checkpoint's
    assert avg["extra_state"] == {"n": 600} and "last_optimizer_state" not in avg


def test_mean_keeps_dtype_and_is_computed_in_fp32(tmp_path):
    # bf16 cannot hold 256 + 1: summing in bf16 would give (256 + 256 + 256) / 3 = 256, not 256.33
    paths = [_save(tmp_path / f"c{i}.pt", [w], dtype=torch.bfloat16) for i, w in enumerate((256.0, 257.0, 256.0))]
    w = averaging.average_checkpoints(paths)["model"]["w"]
    assert w.dtype == torch.bfloat16
    assert w.item() == torch.tensor(256.0 + 1 / 3).to(torch.bfloat16).item()


def test_interval_checkpoints_sorted_by_update(tmp_path):
    for name in ("checkpoint_9_1800.pt", "checkpoint_10_2000.pt", "checkpoint_2_200.pt", "checkpoint_best.pt",
                 "checkpoint_last.pt", "checkpoint_11_2200.pt.tmp"):
        (tmp_path / name).write_bytes(b"")
    names = [p.name for p in averaging.interval_checkpoints(tmp_path, 2)]
    assert names == ["checkpoint_9_1800.pt", "checkpoint_10_2000.pt"]
    assert len(averaging.interval_checkpoints(tmp_path, 5)) == 3


def test_different_models_name_the_file(tmp_path):
    a = _save(tmp_path / "a.pt", [1.0, 2.0])
    b = _save(tmp_path / "b.pt", [1.0, 2.0, 3.0])
    with pytest.raises(ImitKDError, match=r"b\.pt: w has shape \(3,\)"):
        averaging.average_checkpoints([a, b])


def test_cli_averages_the_last_n_and_reports_too_few(tmp_path, capsys):
    for u in (200, 400, 600):
        _save(tmp_path / f"checkpoint_1_{u}.pt", [float(u)], steps=u)
    out = tmp_path / "avg.pt"
    assert averaging.main(["--inputs", str(tmp_path), "--num-update-checkpoints", "2", "--output", str(out)]) == 0
    assert torch.load(out)["model"]["w"].item() == 500.0
    assert averaging.main(["--inputs", str(tmp_path), "--num-update-checkpoints", "4", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "3 interval checkpoints" in err
    assert averaging.main(["--inputs", str(tmp_path / "nope"), "--num-update-checkpoints", "2", "--output", str(out)]) == 2
    assert "nope: no such save directory" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    assert averaging.main(["--inputs", str(tmp_path), "--num-update-checkpoints", "2", "--output",
                           str(tmp_path / "a-file" / "avg.pt")]) == 2
    assert capsys.readouterr().err == f"error: --output {tmp_path}/a-file/avg.pt: {tmp_path}/a-file is not a directory\n"


def test_cli_names_a_file_it_cannot_write(tmp_path, capsys, monkeypatch):
    """An OSError with a file name (an output directory one may not write, as a non-root user) is one line."""
    ckpt = _save(tmp_path / "a.pt", [1.0])

    def no_permission(paths, output):
        raise PermissionError(13, "Permission denied", str(output))

    monkeypatch.setattr(averaging, "save_average", no_permission)
    assert averaging.main(["--inputs", str(ckpt), "--output", str(tmp_path / "avg.pt")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path}/avg.pt: Permission denied\n"


def test_cli_names_the_flag_for_a_directory_a_negative_count_and_a_directory_output(tmp_path, capsys):
    """A save directory without --num-update-checkpoints, a negative count, an --output directory: one line
    naming the flag (was 'no such checkpoint file', 'no checkpoints to average', the hidden temp file)."""
    ckpt = _save(tmp_path / "checkpoint_1_100.pt", [1.0])
    out = str(tmp_path / "avg.pt")
    for extra in ([], ["--num-update-checkpoints", "0"]):
        assert averaging.main(["--inputs", str(tmp_path), "--output", out, *extra]) == 2
        assert capsys.readouterr().err == (f"error: --inputs {tmp_path}: a directory; pass --num-update-checkpoints "
                                           "N to average its last N interval checkpoints (or name checkpoint files)\n")
    assert averaging.main(["--inputs", str(tmp_path), "--num-update-checkpoints", "-1", "--output", out]) == 2
    assert capsys.readouterr().err.startswith("error: --num-update-checkpoints must be >= 1 (0: average the --inputs "
                                              "files), got -1\n")
    assert averaging.main(["--inputs", str(ckpt), "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: --output {tmp_path}: is a directory; name the averaged checkpoint's file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_1_100.pt"]  # nothing written
