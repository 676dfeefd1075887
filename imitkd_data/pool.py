"""Run a job list on a process pool with a progress bar (feature extraction, speech synthesis)."""
import multiprocessing
import signal

#: the signals a pool worker must never take in a Python handler
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _worker_signals(blocked):
    """Pool worker initializer: SIGTERM kills the worker outright, SIGINT is left to the parent, then
    the signals blocked across the fork are let in (one that came meanwhile acts now, by default).

    A forked worker inherits the caller's Python signal handlers (the demo's stop its children and
    raise). Python runs such a handler only when the interpreter next checks, and a raise inside the
    fork's own callbacks is ignored. So a SIGTERM from the pool's ``terminate`` that arrives just after
    the fork, or between that check and the worker's blocking wait for its next task, is lost, and
    ``terminate`` waits for that worker forever: a medium corpus build hung so; a loop of small pools
    under a raising SIGTERM handler hangs within a few hundred pools, and none in 3,000 with this."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group: the parent ends the pool
    signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)


def _start_pool(ctx, workers: int):
    """``ctx.Pool(workers)`` whose workers are forked with ``_STOP_SIGNALS`` blocked until
    ``_worker_signals`` has set their handling (the caller's mask is restored at once)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        return ctx.Pool(workers, initializer=_worker_signals, initargs=(_STOP_SIGNALS,))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def map_with_progress(fn, jobs: list, workers: int, desc: str, progress: bool = True, chunksize: int = 4):
    """``[fn(j) for j in jobs]`` on a process pool (fork) with a tqdm bar; in-process if workers <= 1.
    ``fn`` must be a module-level function (it is pickled by name). Once all results are in, the pool
    ends by ``close`` and ``join`` (each worker takes its stop sentinel and exits); by ``terminate``
    (SIGTERM) only on an error or an interrupt."""
    from tqdm import tqdm

    bar = dict(total=len(jobs), desc=desc, disable=not progress, unit="utt", smoothing=0.05)
    if workers <= 1 or len(jobs) <= 1:
        return [fn(j) for j in tqdm(jobs, **bar)]
    if "fork" in multiprocessing.get_all_start_methods() and hasattr(signal, "pthread_sigmask"):
        pool = _start_pool(multiprocessing.get_context("fork"), workers)
    else:  # spawn: the workers are new interpreters, with default handlers
        pool = multiprocessing.get_context().Pool(workers)
    with pool:  # leaving by an exception: terminate
        results = list(tqdm(pool.imap(fn, jobs, chunksize=chunksize), **bar))
        pool.close()
        pool.join()
    return results
