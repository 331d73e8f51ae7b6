"""The HTTP side of ``torchdiffusion serve``: AUTOMATIC1111's ``/sdapi/v1`` routes and the web page, on FastAPI.

Every request is checked (token, body size, fields, limits) before it is queued; the queue is bounded and served
by worker threads sharing one pipeline (:mod:`.jobs`, :mod:`.engine`). Errors answer as JSON
``{"error", "detail", "field"}``; no stack trace reaches a client.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import secrets
import socket
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from ..schedulers.samplers import A1111_SAMPLER_ALIASES, A1111_SAMPLERS, A1111_SCHEDULERS
from .engine import Engine, Generation, info_json, infotext, png_base64, preview
from .jobs import Job, JobQueue, QueueFull, check_count
from .schemas import (
    ErrorResponse,
    FieldError,
    ImagesResponse,
    Img2ImgRequest,
    Limits,
    ProgressResponse,
    ProgressState,
    Txt2ImgRequest,
    check_request,
    decode_image,
)

logger = logging.getLogger("torchdiffusion.serve")
STATIC = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
StepHook = Callable[[Job, int], None]


def default_model() -> str | None:
    """The folder of the embedded text-to-image model (:data:`torchdiffusion.pretrained.EMBEDDED_MODEL`), or None
    when this build ships none."""
    from ..pretrained import embedded_model_path

    try:
        return embedded_model_path()
    except FileNotFoundError:
        return None


def _error(status: int, error: str, detail: str, field: str | None = None, headers: dict | None = None) -> Response:
    body = {"error": error, "detail": detail}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers)


class _Guard:
    """ASGI middleware: the token (``Authorization: Bearer <token>``, or HTTP Basic with the token as password so
    a browser can open the page) and the body size, checked before any route runs."""

    def __init__(self, app: Any, token: str | None, max_body_bytes: int) -> None:
        self.app, self.max_body = app, max_body_bytes
        self.token = token.encode() if token else None

    def _authorized(self, header: bytes | None) -> bool:
        scheme, _, value = (header or b"").decode("latin-1").partition(" ")
        given = value.strip()
        if scheme.lower() == "basic":
            try:
                given = base64.b64decode(given, validate=True).decode("utf-8").partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                return False
        elif scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.encode("utf-8", "replace"), self.token)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.token is not None and not self._authorized(headers.get(b"authorization")):
            challenge = {"WWW-Authenticate": 'Bearer, Basic realm="torchdiffusion"'}
            response = _error(401, "Unauthorized", "send the server's token: Authorization: Bearer <token>",
                              headers=challenge)  # fmt: skip
            return await response(scope, receive, send)
        length = headers.get(b"content-length", b"0")
        too_big = _error(413, "PayloadTooLarge", f"the request body is over {self.max_body} bytes", "body")
        if not length.isdigit() or int(length) > self.max_body:
            return await too_big(scope, receive, send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:  # a chunked body without a length: stop reading at the limit
                raise HTTPException(413, f"the request body is over {self.max_body} bytes")
            return message

        await self.app(scope, counted, send)


def create_app(
    engine: Engine,
    *,
    token: str | None = None,
    workers: int = 1,
    max_queue: int = 16,
    limits: Limits | None = None,
    step_hook: StepHook | None = None,
) -> FastAPI:
    """The ASGI app serving ``engine``: ``workers`` threads, at most ``max_queue`` waiting requests, ``limits`` on
    each request, every route behind ``token`` when given. ``step_hook(job, step)`` runs in the worker after every
    denoising step (tests use it to hold a job)."""
    limits = limits or Limits()
    queue = JobQueue(workers, max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        queue.start()
        yield
        await run_in_threadpool(queue.stop)

    app = FastAPI(title="torchdiffusion serve", version="1", lifespan=lifespan,
                  responses={422: {"model": ErrorResponse}, 429: {"model": ErrorResponse}})  # fmt: skip
    app.state.queue, app.state.engine, app.state.limits = queue, engine, limits
    app.add_middleware(_Guard, token=token, max_body_bytes=limits.max_body_bytes)
    _add_error_handlers(app)

    def prepare(req: Txt2ImgRequest) -> Generation:
        sampler, grid, class_name, options = check_request(req, limits, engine.size_multiple)
        problem = engine.check_sampler(class_name, options)
        if problem and grid != "automatic":
            raise FieldError("scheduler", f"{grid!r} is not available with sampler {sampler!r} ({problem})")
        if problem:
            raise FieldError("sampler_name", problem)
        width, height = engine.default_size()
        if engine.fixed_size and (req.width or width, req.height or height) != (width, height):
            raise FieldError("width", f"model {engine.name} makes {width}x{height} images only")
        width, height = req.width or width, req.height or height
        if width * height > limits.max_pixels:
            raise FieldError("width", f"width x height = {width * height} pixels, above {limits.max_pixels}")
        mode, images, mask, strength = "txt2img", [], None, None
        if isinstance(req, Img2ImgRequest):
            mode = "inpaint" if req.mask else "img2img"
            images = [decode_image(data, f"init_images[{i}]", 4 * limits.max_pixels).resize((width, height))
                      for i, data in enumerate(req.init_images)]  # fmt: skip
            if req.mask:
                mask = decode_image(req.mask, "mask", 4 * limits.max_pixels, mode="L").resize((width, height))
                if req.inpainting_mask_invert:
                    mask = mask.point(lambda v: 255 - v)
            strength = req.denoising_strength
        if mode not in engine.modes():
            raise FieldError("init_images" if mode != "txt2img" else "prompt", f"model {engine.name} has no {mode}")
        seed = secrets.randbelow(2**32) if req.seed == -1 else req.seed
        count = req.batch_size * req.n_iter
        return Generation(mode, req.prompt, req.negative_prompt, req.steps, req.cfg_scale, width, height, sampler,
                          grid, class_name, options, [seed + i for i in range(count)], req.batch_size, req.n_iter,
                          strength, images, mask, req.send_images)  # fmt: skip

    def work(gen: Generation, parameters: dict) -> Callable[[Job], dict | None]:
        def run(job: Job) -> dict | None:
            def on_step(done: int, total: int, latents: Any) -> bool:
                job.update(done, total, latents)
                if step_hook is not None:
                    step_hook(job, done)
                return job.stop_requested

            images, stopped = engine.run(gen, on_step)
            if job.cancelled.is_set():
                return None
            texts = [infotext(gen, seed, engine.name) for seed in gen.seeds]
            return {
                "images": [png_base64(im, t) for im, t in zip(images, texts)] if gen.send_images else [],
                "parameters": parameters,
                "info": info_json(gen, engine.name, len(images), stopped),
            }

        return run

    async def submit(request: Request, req: Txt2ImgRequest, kind: str) -> Response | dict:
        gen = await run_in_threadpool(prepare, req)
        parameters = req.model_dump(exclude={"init_images", "mask"})
        job = Job(work(gen, parameters), task_id=req.force_task_id, kind=kind)
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def finished(j: Job) -> None:
            outcome = (j.result, j.error)
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(outcome))

        job.on_done = finished
        try:
            queue.submit(job)
        except QueueFull as full:
            return _error(429, "QueueFull", str(full), headers={"Retry-After": str(full.retry_after)})
        while not done.done():
            try:
                await asyncio.wait_for(asyncio.shield(done), 0.2)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    queue.cancel(job)
                    return Response(status_code=499)  # nobody reads it
        result, error = done.result()
        if error is not None:
            if isinstance(error, (ValueError, TypeError)):
                return _error(422, type(error).__name__, str(error))
            logger.error("job %s failed", job.id, exc_info=error)
            return _error(500, "InternalError", "the job failed; see the server log")
        if result is None:
            return _error(503, "Cancelled", "the job was cancelled (server shutting down)")
        return result

    @app.post("/sdapi/v1/txt2img", response_model=ImagesResponse)
    async def txt2img(req: Txt2ImgRequest, request: Request):
        """Text to image: A1111's request fields; the images come back as base64 PNGs."""
        return await submit(request, req, "txt2img")

    @app.post("/sdapi/v1/img2img", response_model=ImagesResponse)
    async def img2img(req: Img2ImgRequest, request: Request):
        """Image to image from ``init_images`` (and inpainting where ``mask`` is given)."""
        return await submit(request, req, "img2img")

    @app.get("/sdapi/v1/progress", response_model=ProgressResponse)
    def progress(id_task: str | None = None, skip_current_image: bool = False):
        """Progress of the oldest running job (or of the job ``id_task``, a request's ``force_task_id``), with a
        cheap preview of its first image (base64 PNG at latent resolution) for Stable Diffusion models."""
        running, waiting = queue.snapshot()
        place = 0
        if id_task is not None:
            job, place = queue.find(id_task)
        else:
            job = running[0] if running else None
        if job is None:
            return ProgressResponse(progress=0.0, eta_relative=0.0, state=ProgressState(job_count=waiting))
        elapsed = (job.finished or time.time()) - (job.started or job.created)
        fraction = job.progress
        eta = elapsed / fraction - elapsed if 0 < fraction < 1 else 0.0
        state = ProgressState(interrupted=job.interrupted.is_set(), job=job.id, job_count=len(running) + waiting,
                              job_timestamp=str(int(job.created)), job_no=job.number, sampling_step=job.step,
                              sampling_steps=job.steps, queue_position=place)  # fmt: skip
        image = None if skip_current_image or job.finished else preview(job.latents)
        current = png_base64(image) if image is not None else None
        return ProgressResponse(progress=fraction, eta_relative=eta, state=state, current_image=current)

    @app.post("/sdapi/v1/interrupt")
    def interrupt():
        """Stop the running jobs at their next step; they answer with the images they have."""
        return {"interrupted": queue.interrupt()}

    @app.get("/sdapi/v1/samplers")
    def samplers():
        """The A1111 samplers this model can use."""
        usable = [n for n, (c, o) in A1111_SAMPLERS.items() if engine.check_sampler(c, o) is None]
        return [{"name": n, "aliases": [a for a, t in A1111_SAMPLER_ALIASES.items() if t == n], "options": {}}
                for n in usable]  # fmt: skip

    @app.get("/sdapi/v1/schedulers")
    def schedulers():
        """The noise-level grids (A1111's "schedule types")."""
        return [{"name": k, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
                for k, (label, _) in A1111_SCHEDULERS.items()]  # fmt: skip

    @app.get("/sdapi/v1/sd-models")
    def sd_models():
        """The one model this server runs."""
        return [{"title": engine.name, "model_name": engine.name, "hash": None, "sha256": None,
                 "filename": engine.name, "config": None, "modes": list(engine.modes())}]  # fmt: skip

    @app.get("/sdapi/v1/options")
    def options():
        return {"sd_model_checkpoint": engine.name}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        return Response(_static("index.html"), media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str):
        if name not in STATIC:  # a fixed list: clients never name files
            return _error(404, "NotFound", f"no static file {name!r}")
        return Response(_static(name), media_type=STATIC[name])

    return app


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors():
            loc = [p for p in err.get("loc", ()) if p != "body"]
            field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
            field = "body" if err.get("type") == "json_invalid" or not field else field
            problems.append((field, str(err.get("msg", "invalid"))))
        field, message = problems[0] if problems else ("body", "invalid request")
        return _error(422, "ValidationError", f"{field}: {message}", field)

    @app.exception_handler(FieldError)
    async def bad_field(request: Request, exc: FieldError):
        return _error(422, "ValidationError", str(exc), exc.field)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        from http import HTTPStatus

        field = "body" if exc.status_code == 413 else None
        return _error(exc.status_code, HTTPStatus(exc.status_code).phrase.replace(" ", ""), str(exc.detail), field,
                      headers=getattr(exc, "headers", None))  # fmt: skip

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, "InternalError", "internal error; see the server log")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(
    model: str | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    token: str | None = None,
    workers: int = 1,
    max_queue: int = 16,
    limits: Limits | None = None,
    device: str | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    """Load ``model`` (a pipeline folder; the embedded model when None), bind ``host``:``port`` and serve until
    interrupted. ``announce`` receives the URL line."""
    import uvicorn

    check_count("workers", workers, 1)  # before the (slow) model load
    check_count("max_queue", max_queue, 0)
    check_count("port", port, 0)
    if token is not None and not token.strip():
        raise ValueError("token must not be empty: pass --token with a secret, or leave it out")
    if model is None:
        model = default_model()
        if model is None:
            raise ValueError(
                "MODEL is missing and this build ships no embedded text-to-image model: pass a pipeline folder, "
                "e.g. `torchdiffusion serve path/to/stable-diffusion`"
            )
    engine = Engine.load(model, device)
    if workers > 1 and engine.device.type == "cpu":
        import torch

        # Each worker's ops run on their own OpenMP team: split the cores instead of oversubscribing them.
        torch.set_num_threads(max(1, torch.get_num_threads() // workers))
    app = create_app(engine, token=token, workers=workers, max_queue=max_queue, limits=limits)
    sock = bind(host, port)
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        announce(f"warning: serving on {host} without --token: anyone who can reach this port can use it")
    announce(f"torchdiffusion serve: {engine.name} at {url_of(sock)} ({workers} worker(s), queue {max_queue}; "
             f"API docs at {url_of(sock)}docs)")  # fmt: skip
    config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
