"""The bounded job queue of ``torchdiffusion serve``: ``workers`` threads take jobs from a queue of at most
``max_queue`` waiting jobs. Torch-free: a job is any callable; the app gives it the pipeline work.

A full queue refuses at once (:class:`QueueFull`, with a retry estimate) instead of letting requests pile up;
a cancelled job leaves the queue at once, or stops at its next denoising step when already running.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


def check_count(name: str, value: object, minimum: int) -> int:
    """``value`` if it is an int >= ``minimum``; ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class QueueFull(Exception):
    """The queue holds ``max_queue`` waiting jobs; ``retry_after`` (seconds) estimates when a slot frees up."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the queue is full; retry in about {retry_after} s")
        self.retry_after = retry_after


class Job:
    """One request's work: ``work(job)`` runs in a worker thread; ``on_done(job)`` then reads ``job.result`` (or
    ``job.error``), which are dropped right after. The work reports progress through :meth:`update` and polls
    :attr:`stop_requested`."""

    _numbers = itertools.count(1)

    def __init__(self, work: Callable[[Job], Any], task_id: str | None = None, kind: str = "job") -> None:
        self.work = work
        self.id = task_id or uuid.uuid4().hex
        self.kind = kind
        self.number = next(self._numbers)
        self.created = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self.step = 0  # steps done, summed over the job's iterations
        self.steps = 0  # steps in all, over the job's iterations
        self.latents: Any = None  # the running sample of the first image, for a preview
        self.cancelled = threading.Event()  # the client went away: stop and throw the result away
        self.interrupted = threading.Event()  # POST /interrupt: stop and return what there is
        self.result: Any = None
        self.error: BaseException | None = None
        self.on_done: Callable[[Job], None] | None = None

    @property
    def stop_requested(self) -> bool:
        return self.cancelled.is_set() or self.interrupted.is_set()

    @property
    def progress(self) -> float:
        if self.finished is not None:
            return 1.0
        return min(self.step / self.steps, 1.0) if self.steps else 0.0

    def update(self, step: int, steps: int, latents: Any = None) -> None:
        """Record progress: ``step`` of ``steps`` done (both over the whole job), and the running sample."""
        self.step, self.steps, self.latents = step, steps, latents


class JobQueue:
    """``workers`` threads serving a FIFO: at most ``workers + max_queue`` jobs are waiting or running at a time."""

    def __init__(self, workers: int = 1, max_queue: int = 16) -> None:
        check_count("workers", workers, 1)
        check_count("max_queue", max_queue, 0)
        self.workers, self.max_queue = workers, max_queue
        self._pending: collections.deque[Job] = collections.deque()
        self._running: list[Job] = []
        self._recent: collections.OrderedDict[str, Job] = collections.OrderedDict()  # finished, for /progress
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._mean_seconds = 1.0
        self.stats = dict(submitted=0, completed=0, failed=0, cancelled=0, rejected=0)

    def start(self) -> None:
        for i in range(self.workers):
            thread = threading.Thread(target=self._serve, name=f"torchdiffusion-serve-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel waiting jobs, stop the running ones at their next step, and join the workers."""
        with self._cond:
            self._stopping = True
            for job in self._running:
                job.cancelled.set()
            dropped = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for job in dropped:
            job.cancelled.set()
            self._finish(job)
        for thread in self._threads:
            thread.join(timeout)

    def submit(self, job: Job) -> None:
        """Queue ``job``; :class:`QueueFull` when ``workers + max_queue`` jobs already wait or run."""
        with self._cond:
            if self._stopping:
                raise QueueFull(self._estimate())
            # Count every job in the house, not just the waiting ones: a worker that has just finished a job takes
            # the next one a moment later, and a client answered in that moment must still find its slot.
            if len(self._pending) + len(self._running) >= self.workers + self.max_queue:
                self.stats["rejected"] += 1
                raise QueueFull(self._estimate())
            self._pending.append(job)
            self.stats["submitted"] += 1
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """The client went away: drop ``job`` from the queue, or make it stop at its next step."""
        job.cancelled.set()
        with self._cond:
            try:
                self._pending.remove(job)
            except ValueError:
                return
        self._finish(job)

    def interrupt(self) -> int:
        """Ask every running job to stop at its next step and return what it has; the number of jobs asked."""
        with self._cond:
            for job in self._running:
                job.interrupted.set()
            return len(self._running)

    def snapshot(self) -> tuple[list[Job], int]:
        """(the running jobs, oldest first; the number of waiting jobs)."""
        with self._cond:
            return list(self._running), len(self._pending)

    def find(self, task_id: str) -> tuple[Job | None, int]:
        """(the job with id ``task_id`` if waiting, running or recently finished; its place in the queue, 0 if
        not waiting)."""
        with self._cond:
            for place, job in enumerate(self._pending, 1):
                if job.id == task_id:
                    return job, place
            for job in self._running:
                if job.id == task_id:
                    return job, 0
            return self._recent.get(task_id), 0

    # ---- internals -------------------------------------------------------------------------------------
    def _estimate(self) -> int:
        ahead = len(self._pending) + len(self._running)
        return max(1, math.ceil(self._mean_seconds * ahead / self.workers))

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._pending.popleft()
                self._running.append(job)
            job.started = time.time()
            try:
                job.result = job.work(job)
            except BaseException as err:  # noqa: BLE001 - handed to the request, which answers with it
                job.error = err
            with self._cond:
                self._running.remove(job)
                seconds = time.time() - job.started
                self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * seconds
            self._finish(job)

    def _finish(self, job: Job) -> None:
        job.finished = time.time()
        with self._cond:
            key = "cancelled" if job.cancelled.is_set() else "failed" if job.error is not None else "completed"
            self.stats[key] += 1
            self._recent[job.id] = job
            while len(self._recent) > 64:
                self._recent.popitem(last=False)
        if job.on_done is not None:
            try:
                job.on_done(job)
            except Exception:  # a closed event loop at shutdown: nobody is waiting any more
                logger.debug("job %s: on_done failed", job.id, exc_info=True)
        job.result = job.work = job.latents = None  # finished jobs keep progress, not images: memory stays flat
