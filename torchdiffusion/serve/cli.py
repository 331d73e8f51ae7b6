"""The ``torchdiffusion serve`` subcommand: its arguments (no FastAPI needed for ``--help``) and its run."""

from __future__ import annotations

import argparse


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``serve`` subcommand to the ``torchdiffusion`` parser's subparsers ``sub``."""
    p = sub.add_parser("serve", help="serve a pipeline folder over AUTOMATIC1111's HTTP API, with a web page")
    p.add_argument("model", nargs="?", default=None,
                   help="a pipeline folder (default: the embedded text-to-image model)")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN' on every route")
    p.add_argument("--workers", type=int, default=1, help="threads sharing the one pipeline")
    p.add_argument("--max-queue", type=int, default=16, help="requests waiting besides the running ones; more get 429")
    p.add_argument("--max-steps", type=int, default=100)
    p.add_argument("--max-pixels", type=int, default=1024 * 1024, help="width x height at most")
    p.add_argument("--max-batch", type=int, default=8, help="batch_size x n_iter at most")
    p.add_argument("--max-prompt-chars", type=int, default=4000)
    p.add_argument("--max-body-mb", type=float, default=16.0, help="request body size limit (MiB)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")


def run_serve(args: argparse.Namespace) -> int:
    """Serve until interrupted (Ctrl-C); ImportError when the ``serve`` extra is missing."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise ImportError(f"{err}; `torchdiffusion serve` needs: pip install 'torchdiffusion[serve]'") from None
    from .app import serve
    from .schemas import Limits

    limits = Limits(args.max_steps, args.max_pixels, args.max_batch, args.max_prompt_chars,
                    int(args.max_body_mb * 1024 * 1024))  # fmt: skip
    serve(args.model, args.host, args.port, args.token, args.workers, args.max_queue, limits, args.device)
    return 0
