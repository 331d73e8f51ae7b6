"""``torchdiffusion serve`` under load: N concurrent clients x M requests against a real server process.

Starts ``python -m torchdiffusion serve MODEL`` (the embedded model by default; while there is none, the tests'
tiny random SD folder, which ``--model tiny`` also picks), first sends every request from one client (the
reference answers and the one-client throughput), then the same requests from N clients at once, and checks that
every concurrent answer equals its reference. Prints p50 / p95 latency, throughput against one client, the
server's RSS after warm-up and at the end, its peak RSS, and the errors and lost requests (none are expected: the
queue is sized to exactly the clients that can wait).

    python benchmarks/serve_load.py [--model PATH|tiny] [--clients 4] [--requests 5] [--workers 2] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def rss_mb(pid: int) -> float | None:
    """The resident memory of process ``pid`` in MiB (Linux), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def start_server(model: str, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "torchdiffusion", "serve", model, "--port", "0", "--workers", str(args.workers),
           "--max-queue", str(args.max_queue), "--max-steps", str(max(100, args.steps))]  # fmt: skip
    log = tempfile.TemporaryFile("w+")  # the server's log, shown only when it fails to start
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    line = proc.stdout.readline()
    if " at http" not in line:
        proc.kill()
        log.seek(0)
        raise SystemExit(f"the server did not start: {line!r}\n{log.read()[-3000:]}")
    url = line.split(" at ")[1].split(" ")[0].rstrip("/")
    for _ in range(600):
        try:
            httpx.get(url + "/sdapi/v1/sd-models", timeout=5)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server does not answer")


def run_clients(url: str, bodies: list[dict], clients: int) -> tuple[list, float]:
    """Send ``bodies`` from ``clients`` threads (request i from client i % clients); return ([(status, images,
    seconds) or None per request], wall seconds)."""
    answers: list = [None] * len(bodies)

    def client(k: int) -> None:
        with httpx.Client(timeout=3600) as http:
            for i in range(k, len(bodies), clients):
                started = time.perf_counter()
                try:
                    r = http.post(url + "/sdapi/v1/txt2img", json=bodies[i])
                    images = r.json().get("images") if r.status_code == 200 else None
                    answers[i] = (r.status_code, images, time.perf_counter() - started)
                except httpx.HTTPError as err:
                    print(f"request {i}: {type(err).__name__}: {err}", file=sys.stderr)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a pipeline folder, 'tiny', or nothing: the embedded model")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=5, help="requests per client")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-queue", type=int, default=None,
                        help="default: clients - workers, the capacity that must refuse no client")  # fmt: skip
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=None, help="width = height (default: the model's own)")
    args = parser.parse_args()
    args.max_queue = max(0, args.clients - args.workers) if args.max_queue is None else args.max_queue

    model = args.model
    if model is None:
        from torchdiffusion.serve.app import default_model

        model = default_model()
        if model is None:
            print("no embedded model in this install: using the tests' tiny random SD folder (--model tiny)")
            model = "tiny"
    if model == "tiny":
        from tests.sd_fixtures import save_tiny_sd

        model = save_tiny_sd(os.path.join(tempfile.mkdtemp(), "tiny-sd"))

    n = args.clients * args.requests
    size = {"width": args.size, "height": args.size} if args.size else {}
    bodies = [{"prompt": f"a photo of the cat, take {i}", "steps": args.steps, "seed": 1000 + i, **size}
              for i in range(n)]  # fmt: skip
    proc, url = start_server(model, args)
    try:
        run_clients(url, bodies[:1], 1)  # warm-up: first-call costs stay out of the figures
        warm_rss = rss_mb(proc.pid)
        reference, one_seconds = run_clients(url, bodies, 1)
        answers, many_seconds = run_clients(url, bodies, args.clients)
        end_rss = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
    peak_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux

    lost = sum(a is None for a in answers)
    errors = sum(a is not None and a[0] != 200 for a in answers)
    wrong = sum(a is not None and a[0] == 200 and r is not None and a[1] != r[1] for a, r in zip(answers, reference))
    latencies = sorted(a[2] for a in answers if a is not None and a[0] == 200)
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else float("nan")
    print(f"model {os.path.basename(model)}: {args.clients} clients x {args.requests} requests, {args.steps} steps, "
          f"{args.workers} workers, queue {args.max_queue}")  # fmt: skip
    print(f"  answers equal to the one-client reference: {n - lost - errors - wrong} / {n}")
    print(f"  errors {errors}, lost {lost}, wrong images {wrong}")
    if latencies:
        print(f"  latency p50 {statistics.median(latencies):.2f} s, p95 {p95:.2f} s")
    print(f"  throughput {n / many_seconds:.2f} req/s with {args.clients} clients vs {n / one_seconds:.2f} req/s with "
          f"one ({one_seconds / many_seconds:.2f}x)")  # fmt: skip
    if warm_rss is not None:
        print(f"  server RSS after warm-up {warm_rss:.0f} MiB, at the end {end_rss:.0f} MiB; peak {peak_rss:.0f} MiB")
    if lost or errors or wrong:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
