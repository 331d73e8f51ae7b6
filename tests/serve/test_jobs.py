"""The job queue on its own (no HTTP, no model)."""

from __future__ import annotations

import threading

import pytest

from torchdiffusion.serve.jobs import Job, JobQueue, QueueFull

BAD = [("workers", {"workers": 0}), ("workers", {"workers": True}), ("max_queue", {"max_queue": -1}),
       ("max_queue", {"max_queue": 1.5})]  # fmt: skip


@pytest.mark.parametrize("name, kwargs", BAD)
def test_bad_arguments(name, kwargs):
    with pytest.raises(ValueError, match=name):
        JobQueue(**kwargs)


def test_runs_jobs_and_refuses_when_full():
    release = threading.Event()
    queue = JobQueue(workers=1, max_queue=1)
    queue.start()
    done = []
    try:
        first = Job(lambda job: release.wait(30) and "first")
        first.on_done = lambda job: done.append(job.result)
        queue.submit(first)
        while not queue.snapshot()[0]:
            threading.Event().wait(0.01)
        second = Job(lambda job: "second")
        second.on_done = lambda job: done.append(job.result)
        queue.submit(second)
        with pytest.raises(QueueFull) as full:
            queue.submit(Job(lambda job: "third"))
        assert full.value.retry_after >= 1 and queue.stats["rejected"] == 1
        release.set()
        for _ in range(3000):
            if len(done) == 2:
                break
            threading.Event().wait(0.01)
        assert done == ["first", "second"]
        assert first.result is None  # dropped after on_done: finished jobs keep no images
        assert queue.find(first.id) == (first, 0) and first.progress == 1.0
    finally:
        release.set()
        queue.stop()


def test_cancel_a_waiting_job_and_stop():
    release = threading.Event()
    queue = JobQueue(workers=1, max_queue=2)
    queue.start()
    blocker = Job(lambda job: release.wait(30))
    queue.submit(blocker)
    while not queue.snapshot()[0]:
        threading.Event().wait(0.01)
    waiting = Job(lambda job: "never")
    queue.submit(waiting)
    assert queue.find(waiting.id)[1] == 1
    queue.cancel(waiting)
    assert waiting.cancelled.is_set() and queue.stats["cancelled"] == 1
    assert queue.snapshot()[1] == 0
    release.set()
    queue.stop()
    with pytest.raises(QueueFull):
        queue.submit(Job(lambda job: None))


def test_no_queue_but_an_idle_worker():
    queue = JobQueue(workers=1, max_queue=0)
    queue.start()
    try:
        queue.submit(Job(lambda job: None))  # an idle worker takes it
    finally:
        queue.stop()


def test_errors_are_handed_over():
    seen = []
    queue = JobQueue(workers=1)
    queue.start()
    job = Job(lambda job: 1 / 0)
    job.on_done = lambda j: seen.append(type(j.error).__name__)
    queue.submit(job)
    for _ in range(3000):
        if seen:
            break
        threading.Event().wait(0.01)
    queue.stop()
    assert seen == ["ZeroDivisionError"] and queue.stats["failed"] == 1


def test_a_client_answered_finds_its_slot():
    """A job's client gets its answer (on_done) before the worker takes the next job; a request it sends at once
    must not find the queue full (the capacity is workers + max_queue jobs in the house)."""
    queue = JobQueue(workers=1, max_queue=1)
    release, accepted, finished = threading.Event(), [], threading.Event()
    first = Job(lambda job: release.wait(30))

    def resubmit(job):
        try:
            queue.submit(Job(lambda j: finished.set()))
            accepted.append(True)
        except QueueFull:
            accepted.append(False)

    first.on_done = resubmit
    queue.start()
    try:
        queue.submit(first)
        while not queue.snapshot()[0]:
            threading.Event().wait(0.01)
        queue.submit(Job(lambda job: None))  # waits behind the first
        with pytest.raises(QueueFull):
            queue.submit(Job(lambda job: None))  # 1 running + 1 waiting: full
        release.set()
        assert finished.wait(30)
        assert accepted == [True]
    finally:
        release.set()
        queue.stop()
