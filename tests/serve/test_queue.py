"""The bounded queue under load, deterministically: jobs are held at a step by a gate (a step hook waiting on an
event), never timed."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time

import httpx
import pytest
from PIL import Image

from .conftest import Gate, running_server
from .test_api import SMALL


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Call(threading.Thread):
    """A POST in a background thread; ``.response`` once joined."""

    def __init__(self, url: str, body: dict, route: str = "txt2img") -> None:
        super().__init__(daemon=True)
        self.url, self.body, self.route, self.response = url, body, route, None
        self.start()

    def run(self) -> None:
        self.response = httpx.post(f"{self.url}/sdapi/v1/{self.route}", json=self.body, timeout=120)


def progress(url: str, task: str) -> dict:
    return httpx.get(f"{url}/sdapi/v1/progress", params={"id_task": task}).json()


def test_full_queue_answers_429_at_once(engine):
    gate = Gate()
    with running_server(engine, workers=1, max_queue=1, step_hook=gate) as url:
        held = Call(url, {**SMALL, "force_task_id": "hold-a"})
        assert gate.holding.wait(60)
        queued = Call(url, {**SMALL, "force_task_id": "b"})
        wait_for(lambda: progress(url, "b")["state"]["queue_position"] == 1, "b to wait in the queue")
        r = httpx.post(f"{url}/sdapi/v1/txt2img", json=SMALL, timeout=60)  # answered while "hold-a" is held
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"] == "QueueFull"
        assert held.is_alive() and queued.is_alive()
        p = httpx.get(f"{url}/sdapi/v1/progress").json()  # the running job's progress
        assert p["state"]["job"] == "hold-a" and p["state"]["sampling_step"] == 1 and p["state"]["job_count"] == 2
        assert 0 < p["progress"] < 1
        preview = Image.open(io.BytesIO(base64.b64decode(p["current_image"])))
        assert preview.size == (4, 4)  # the latents' size: a cheap preview, not a decode
        assert httpx.get(f"{url}/sdapi/v1/progress?skip_current_image=true").json()["current_image"] is None
        gate.open()
        held.join(60), queued.join(60)
        assert held.response.status_code == 200 and queued.response.status_code == 200


def test_interrupt_stops_the_running_job(engine):
    gate = Gate()
    with running_server(engine, workers=1, step_hook=gate) as url:
        call = Call(url, {**SMALL, "steps": 10, "force_task_id": "hold-i"})
        assert gate.holding.wait(60)
        assert httpx.post(f"{url}/sdapi/v1/interrupt").json() == {"interrupted": 1}
        call.join(60)
        assert call.response.status_code == 200
        body = call.response.json()
        assert len(body["images"]) == 1 and json.loads(body["info"])["interrupted"] is True
        assert gate.steps["hold-i"] == 1  # stopped after its first step, not after 10
        assert progress(url, "hold-i")["state"]["interrupted"] is True


def raw_post(url: str, body: dict) -> socket.socket:
    """Send a POST on a raw socket and return it unread (closing it is the client going away)."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    s = socket.create_connection((host, int(port)), timeout=30)
    s.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)  # fmt: skip
    return s


def test_client_going_away_cancels_its_job(engine):
    gate = Gate()
    with running_server(engine, workers=1, max_queue=4, step_hook=gate) as url:
        running = raw_post(url, {**SMALL, "steps": 10, "force_task_id": "hold-gone"})
        assert gate.holding.wait(60)
        waiting = raw_post(url, {**SMALL, "force_task_id": "queued-gone"})
        wait_for(lambda: progress(url, "queued-gone")["state"]["queue_position"] == 1, "the second job to queue")
        waiting.close()  # a waiting job leaves the queue at once...
        wait_for(lambda: progress(url, "queued-gone")["progress"] == 1.0, "the waiting job to be dropped")
        assert progress(url, "queued-gone")["state"]["sampling_step"] == 0  # ...without running
        running.close()  # a running job stops at its next step
        wait_for(lambda: "hold-gone" in gate.stopped, "the running job to stop")
        wait_for(lambda: progress(url, "hold-gone")["progress"] == 1.0, "the running job to end")
        assert gate.steps["hold-gone"] == 1
        gate.open()
        assert httpx.post(f"{url}/sdapi/v1/txt2img", json=SMALL, timeout=60).status_code == 200


REQUESTS = [
    {**SMALL, "seed": 1},
    {**SMALL, "seed": 2, "sampler_name": "Euler a"},
    {**SMALL, "seed": 3, "prompt": "the dog", "batch_size": 2},
    {**SMALL, "seed": 3, "prompt": "a photo of the cat and the dog", "negative_prompt": "the photo of a dog"},
    {**SMALL, "seed": 4, "width": 16, "height": 24, "sampler_name": "DPM++ 2M SDE", "cfg_scale": 3.0},
    {**SMALL, "seed": 5, "sampler_name": "UniPC", "scheduler": "karras", "steps": 3},
]


@pytest.mark.parametrize("workers", [3])
def test_concurrent_equals_sequential(engine, workers):
    from .test_api import b64_image

    requests = [("txt2img", r) for r in REQUESTS]
    requests.append(("img2img", {**SMALL, "seed": 6, "init_images": [b64_image()], "denoising_strength": 0.6}))
    with running_server(engine, workers=workers, max_queue=16) as url:
        alone = [httpx.post(f"{url}/sdapi/v1/{route}", json=body, timeout=120).json()["images"]
                 for route, body in requests]  # fmt: skip
        calls = [Call(url, body, route) for _ in range(2) for route, body in requests]
        for call in calls:
            call.join(120)
        together = [call.response.json()["images"] for call in calls]
    assert together == alone + alone
