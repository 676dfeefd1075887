import contextlib
import fcntl
import os
import shutil
from pathlib import Path

import pytest

import toydata


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> Path:
    """Tiny corpus + a fairseq-trained text NMT expert (≈20 s). Set IMITKD_TEST_CACHE=DIR to reuse
    the build across pytest runs while developing (the pytest-xdist workers then share it, one builds)."""
    cache = os.environ.get("IMITKD_TEST_CACHE")
    root = Path(cache) if cache else tmp_path_factory.mktemp("toy")
    with _exclusive(root):
        if not (root / "expert" / "checkpoint_best.pt").is_file():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            toydata.write_corpus(root)
            toydata.build_expert(root)
    return root


@pytest.fixture(scope="session")
def toy_student(toy) -> Path:
    """A student trained with word_kd through the CLI (also used as a *speech* expert), with an fp32 expert:
    the same student on every machine (``auto`` means bf16 on GPUs and some CPUs)."""
    ckpt = toy / "student_kd" / "checkpoint_best.pt"
    with _exclusive(toy):
        if not ckpt.is_file():
            toydata.run("imitkd-train", *toydata.student_train_args(toy, "word_kd", toy / "student_kd", 200,
                                                                     ["--expert-dtype", "fp32"]))
    return ckpt


@contextlib.contextmanager
def _exclusive(root: Path):
    """Hold a lock beside ``root`` (pytest-xdist workers sharing IMITKD_TEST_CACHE build it once)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
