"""Run a job list on a process pool with a progress bar (feature extraction, speech synthesis)."""
import multiprocessing


def map_with_progress(fn, jobs: list, workers: int, desc: str, progress: bool = True, chunksize: int = 4):
    """``[fn(j) for j in jobs]`` on a process pool (fork) with a tqdm bar; in-process if workers <= 1.
    ``fn`` must be a module-level function (it is pickled by name)."""
    from tqdm import tqdm

    bar = dict(total=len(jobs), desc=desc, disable=not progress, unit="utt", smoothing=0.05)
    if workers <= 1 or len(jobs) <= 1:
        return [fn(j) for j in tqdm(jobs, **bar)]
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    with ctx.Pool(workers) as pool:
        return list(tqdm(pool.imap(fn, jobs, chunksize=chunksize), **bar))
