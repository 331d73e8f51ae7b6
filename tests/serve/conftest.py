"""Fixtures of the serve tests: a tiny random SD folder (built in code), its engine, and real servers on
127.0.0.1 (uvicorn in a thread, on a free port) that tests start and stop."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")


@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory) -> str:
    from tests.sd_fixtures import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("serve") / "tiny-sd")


@pytest.fixture(scope="session")
def engine(sd_folder):
    from torchdiffusion.serve import Engine

    return Engine.load(sd_folder, "cpu")


@contextlib.contextmanager
def running_server(engine, **options) -> Iterator[str]:
    """Serve ``create_app(engine, **options)`` on 127.0.0.1:<free port>; yield the base URL (no trailing /)."""
    import uvicorn

    from torchdiffusion.serve.app import bind, create_app, url_of

    app = create_app(engine, **options)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            thread.join(0.01)
        assert server.started, "the server did not start"
        yield url_of(sock).rstrip("/")
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def server(engine) -> Iterator[str]:
    """A default server (1 worker, queue 16, default limits) shared by a module's tests."""
    with running_server(engine) as url:
        yield url


class Gate:
    """A step hook that holds jobs whose task id (the request's ``force_task_id``) starts with "hold" at each step
    until :meth:`open` (or until the job is asked to stop), so queue tests do not depend on timing."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.holding = threading.Event()  # a held job has reached its first step
        self.steps: dict[str, int] = {}
        self.stopped: list[str] = []

    def __call__(self, job, step: int) -> None:
        self.steps[job.id] = step
        if not self._held(job):
            return
        self.holding.set()
        while not self.opened.wait(0.01):
            if job.stop_requested:
                self.stopped.append(job.id)
                return

    @staticmethod
    def _held(job) -> bool:
        return job.id.startswith("hold")

    def open(self) -> None:
        self.opened.set()
