"""imitkd_data.pool: the results in order, and workers that the pool can always stop."""
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from imitkd_data.pool import map_with_progress

pytestmark = pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")


def _square(x):
    return x * x


def _handlers(_):
    return signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT), os.getpid()


def test_results_come_in_job_order_from_two_workers():
    jobs = list(range(57))
    assert map_with_progress(_square, jobs, workers=2, desc="t", progress=False, chunksize=3) == [x * x for x in jobs]


def test_workers_die_by_sigterm_and_leave_sigint_to_the_caller_whatever_its_handlers():
    """A forked worker must not run the caller's Python handlers (the demo's stop its children and
    raise): a SIGTERM that such a handler gets just before the worker blocks for its next task is lost,
    and ``Pool.terminate`` then waits for it forever (a medium demo hung there)."""
    def callers_handler(signum, frame):
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, callers_handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        out = map_with_progress(_handlers, list(range(8)), workers=2, desc="t", progress=False, chunksize=1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert {(term, intr) for term, intr, _ in out} == {(signal.SIG_DFL, signal.SIG_IGN)}
    assert os.getpid() not in {pid for *_, pid in out}


def _fail_on_first(x):
    if x == 0:
        raise ValueError("job 0")
    return x


RACE = """
import signal, sys
from imitkd_data.pool import map_with_progress
sys.path.insert(0, {tests!r})
from test_pool import _fail_on_first, _square

def raising_handler(signum, frame):  # as the demo's: stop the children, raise
    raise KeyboardInterrupt

signal.signal(signal.SIGTERM, raising_handler)
for i in range(150):
    try:  # an error ends the pool by terminate, while its workers are still starting
        map_with_progress(_fail_on_first, list(range(40)), workers=2, desc="t", progress=False)
    except ValueError:
        pass
    map_with_progress(_square, list(range(40)), workers=2, desc="t", progress=False)
print("done")
"""


def test_the_pool_ends_under_a_raising_sigterm_handler_after_results_and_after_errors():
    """150 pools ended by an error (``terminate``) and 150 ended after their results, in a process whose
    SIGTERM handler raises: before the workers' signal handling was set across the fork, such a loop hung
    within a few hundred pools (the timeout fails the test instead, and ends the hung workers too)."""
    code = RACE.format(tests=str(Path(__file__).parent))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("a pool did not end within 60 s")
    assert proc.returncode == 0 and out.strip() == "done", err[-2000:]
