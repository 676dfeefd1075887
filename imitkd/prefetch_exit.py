"""Stop fairseq's batch-prefetching threads before the interpreter shuts down.

fairseq's ``BufferedIterator`` (``--data-buffer-size``, default 10) reads batches ahead in a daemon thread
(``fairseq.data.iterators.BackgroundConsumer``). A run that stops early (``--max-update``, or a short
validation) leaves that thread producing batches when ``main()`` returns. CPython 3.11 ends a daemon
thread that wakes up during finalisation with ``pthread_exit``; when the thread is inside a torch op, the
forced unwinding meets a ``noexcept`` C++ frame and the process dies with "terminate called without an
active exception" (SIGABRT, exit -6) after a finished run, at random.

``install()`` registers an ``atexit`` hook (it runs before daemon threads are ended) that lets every live
consumer finish the batch in flight, drains its queue so it is not blocked on a full one, and joins it.
"""
import atexit
import queue
import threading
import time

JOIN_TIMEOUT_S = 30.0  # a batch takes milliseconds to seconds to build; never hang an exiting process

_installed = False


def stop_prefetch_threads(timeout_s: float = JOIN_TIMEOUT_S) -> int:
    """Stop the live ``BackgroundConsumer`` threads; returns how many were still running after the timeout."""
    from fairseq.data.iterators import BackgroundConsumer

    deadline = time.monotonic() + timeout_s
    left = 0
    for thread in threading.enumerate():
        if not isinstance(thread, BackgroundConsumer) or not thread.is_alive():
            continue
        thread._max_len = 0  # its loop breaks after the next put (count >= 0), then puts the sentinel
        while thread.is_alive() and time.monotonic() < deadline:
            try:
                while True:
                    thread._queue.get_nowait()  # room for the batch in flight and the sentinel
            except queue.Empty:
                pass
            thread.join(0.01)
        left += thread.is_alive()
    return left


def install():
    """Register the exit hook once per process."""
    global _installed
    if not _installed:
        atexit.register(stop_prefetch_threads)
        _installed = True
