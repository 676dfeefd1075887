import contextlib
import fcntl
import os
import shutil
from pathlib import Path

import pytest

import toydata


#: started first (the longest test: ≈ 2 minutes on one AVX2 core): with ``--dist worksteal`` (``make test``) the
#: xdist workers then end on short tests, whoever runs it
LONGEST_FIRST = ("tests/test_demo.py::test_demo_end_to_end_ci",)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.nodeid not in LONGEST_FIRST)  # (stable: the rest keep their order)


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> Path:
    """Tiny corpus + a fairseq-trained text NMT expert (≈20 s), built once per session: the pytest-xdist
    workers share it (one builds, the others wait for it). Set IMITKD_TEST_CACHE=DIR to reuse the build
    across pytest runs while developing. Tests that add files to it write them atomically
    (``toydata.write_atomically``): workers write the same bytes, and a reader sees one whole file."""
    cache = os.environ.get("IMITKD_TEST_CACHE")
    root = Path(cache) if cache else _session_dir(tmp_path_factory) / "toy"
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


def _session_dir(tmp_path_factory) -> Path:
    """A directory of this pytest session that its xdist workers share (each worker's base temporary
    directory lies in it), or this process's own one without xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def _exclusive(root: Path):
    """Hold a lock beside ``root`` (pytest-xdist workers sharing IMITKD_TEST_CACHE build it once)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
