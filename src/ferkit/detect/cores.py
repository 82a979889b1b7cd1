"""How many cores ferkit may use, the threads that spread one call's work over them, and the per-thread switch
that keeps a detector or classifier on its caller's core."""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_THREAD = threading.local()


@contextmanager
def one_core() -> Iterator[None]:
    """Within this block, detectors and ONNX classifiers called from this thread keep to it (no threads of their own).

    Elsewhere BlazeFace spreads a photo's views over the cores. Callers that search several photos at
    once, one per thread, save the hand-offs between threads that way: a photo took 9.8 ms of CPU on one
    core against 12.0 ms spread over two.
    """
    before = getattr(_THREAD, "one_core", False)
    _THREAD.one_core = True
    try:
        yield
    finally:
        _THREAD.one_core = before


def on_one_core() -> bool:
    """Whether this thread is inside :func:`one_core`."""
    return getattr(_THREAD, "one_core", False)


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (the process it was made in, the pool)
_POOL_LOCK = threading.Lock()


def core_pool() -> ThreadPoolExecutor:
    """Threads, one per usable core, that run the parts of one call (a photo's detector views, a classifier
    batch) side by side; made once per process (a forked child inherits the pool but not its threads, so it
    makes its own). Work run here must not wait on other work run here."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid():
            _POOL = (os.getpid(), ThreadPoolExecutor(usable_cores(), thread_name_prefix="ferkit-cores"))
        return _POOL[1]


def spread(fn: Callable[[T], R], items: list[T]) -> list[R]:
    """``fn`` over ``items`` side by side, results in order: the first on the calling thread (one hand-off
    fewer), the others on :func:`core_pool`."""
    others = [core_pool().submit(fn, item) for item in items[1:]]
    first = fn(items[0])
    return [first, *(other.result() for other in others)]
