"""Dynamic micro-batching: one thread owns the Recognizer and serves a bounded queue of requests.

Requests that arrive within ``max_wait_s`` of the first waiting one, or that are already waiting when
the model is free, go through the model in one call (up to ``max_batch`` images); with batching off
every request gets a call of its own.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ferkit.engine.predict import Recognizer, Result


class QueueFull(Exception):
    """The queue of requests waiting for the model is full; the client should retry later."""


@dataclass(frozen=True)
class PredictOptions:
    """Per-request prediction options; ``None`` keeps the Recognizer's own setting."""

    detect: bool | None = None
    tta: str | None = None
    min_face: int | None = None


@dataclass
class _Job:
    images: list[np.ndarray]
    options: PredictOptions
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Runs ``load()`` (a Recognizer) in its own thread, warms it up, then answers submitted jobs in batches."""

    def __init__(self, load: Callable[[], Recognizer], *, batching: bool = True, max_batch: int = 32,
                 max_wait_s: float = 0.005, queue_size: int = 64, warmup: Callable[[Recognizer], None] | None = None):
        self._load, self._warmup = load, warmup
        self.batching, self.max_batch, self.max_wait_s = batching, max_batch, max_wait_s
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="ferkit-model", daemon=True)
        self.ready = threading.Event()
        self.recognizer: Recognizer | None = None
        self.load_error: str | None = None
        self.model_calls = self.images_done = 0  # since start: their ratio is the mean batch

    def start(self) -> None:
        """Start loading the model in the worker thread; ``ready`` is set once it is loaded and warm."""
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker after the jobs already queued; later ones fail."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:  # a queue that stays full that long has a stuck model: the daemon thread ends with us
            return
        self._thread.join(timeout)

    def full(self) -> bool:
        """Whether a request submitted now would be refused (QueueFull)."""
        return self._queue.full()

    def submit(self, images: list[np.ndarray], options: PredictOptions) -> Future:
        """Queue images for the model; the future's result is one Result per image. Raises QueueFull."""
        job = _Job(images, options)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull from None
        return job.future

    def _run(self) -> None:
        try:
            self.recognizer = self._load()
            if self._warmup is not None:
                self._warmup(self.recognizer)
        except Exception as e:  # the server stays up to say why on /readyz
            self.load_error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        else:
            self.ready.set()
        stopping = False
        while not stopping:
            job = self._queue.get()
            if job is None:
                break
            # The wait counts from the first job's arrival: under load the queue already holds the next
            # jobs and none is kept waiting longer; when idle the first job waits at most max_wait_s.
            jobs, count = [job], len(job.images)
            deadline = job.arrived + self.max_wait_s
            while self.batching and count < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    more = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                jobs.append(more)
                count += len(more.images)
            self._answer(jobs)
        self._fail_left(RuntimeError("the server is stopping"))

    def _answer(self, jobs: list[_Job]) -> None:
        """One model call per distinct set of options among ``jobs``; each job gets its own results."""
        # A request that timed out or went away has cancelled its future: its images are not worth a call,
        # and a future marked running can no longer be cancelled under the worker's feet.
        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if self.recognizer is None:
            for job in jobs:
                job.future.set_exception(RuntimeError(f"the model could not be loaded: {self.load_error}"))
            return
        groups: dict[PredictOptions, list[_Job]] = {}
        for job in jobs:
            groups.setdefault(job.options, []).append(job)
        for options, group in groups.items():
            images = [image for job in group for image in job.images]
            try:
                results = self._call(options, images)
            except Exception as e:  # a failed call fails its requests, never the worker
                for job in group:
                    job.future.set_exception(e)
                continue
            self.model_calls += 1
            self.images_done += len(images)
            start = 0
            for job in group:
                job.future.set_result(results[start : start + len(job.images)])
                start += len(job.images)

    def _call(self, options: PredictOptions, images: list[np.ndarray]) -> list[Result]:
        """The Recognizer on ``images`` with ``options``; only this thread touches the Recognizer."""
        return self.recognizer(images, keep_images=False, detect=options.detect, tta=options.tta,
                               min_face=options.min_face)

    def _fail_left(self, error: Exception) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(error)
