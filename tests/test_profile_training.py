"""benchmarks/profile_training.py: the profile's timers inside a real ``imitkd-train`` run."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import toydata

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_training.py"


def test_profile_training_times_the_pieces_of_real_updates(toy, tmp_path):
    args = toydata.student_train_args(toy, "imit_kd_CE", tmp_path / "run", 6,
                                      ["--beta", "0", "--beta-schedule", "constant", "--expert-dtype", "fp32",
                                       "--rollout-dtype", "fp32", "--disable-validation", "--no-save",
                                       "--profile-skip", "2"])
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stderr.splitlines() if x.startswith("PROFILE"))
    assert line.startswith("PROFILE 4 updates"), line  # 6 updates, the first 2 skipped
    ms = ast.literal_eval(line.split(": ", 1)[1])
    for piece in ("update", "criterion forward", "rollout", "rollout: encoder", "expert", "KD loss forward",
                  "KD loss backward", "student encoder (train)", "backward", "optimizer step"):
        assert ms.get(piece, 0) > 0, (piece, ms)
    # nested pieces lie inside the ones around them
    assert ms["rollout: encoder"] < ms["rollout"] < ms["criterion forward"] < ms["update"]
    assert ms["criterion forward"] + ms["backward"] + ms["optimizer step"] <= ms["update"] * 1.01
