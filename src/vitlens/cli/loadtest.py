"""A loopback load test of a served model beside the same model in-process.

    vitlens loadtest --model-uri models:/vitlens-cifar10/1 [--url http://127.0.0.1:5001]

`--clients` threads each keep one HTTP connection open and post `--requests` requests in all,
`--batch` uint8 images each, then stop; every request has a timeout, so the test ends by itself.
The same batches then run through `mlflow.pyfunc.load_model(uri).predict` in this process.
Prints images/s, p50 and p99 latency of both and writes them as JSON (`--json`).
"""
from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from vitlens.errors import VitlensError, run_main
from vitlens.io import write_json

IMAGE_SHAPE = (32, 32, 3)


@dataclass(frozen=True)
class Load:
    """What a load test saw: `images` answered in `seconds` of wall time."""
    requests: int
    errors: int
    images: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN for no values."""
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(latencies: list[float], errors: int, images: int, seconds: float) -> Load:
    ms = [1000 * s for s in latencies]
    return Load(len(latencies) + errors, errors, images, seconds, percentile(ms, 50),
                percentile(ms, 99))


def pixel_batches(count: int, batch: int, seed: int = 0) -> list[np.ndarray]:
    """`count` random uint8 batches (batch, 32, 32, 3)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (batch, *IMAGE_SHAPE), dtype=np.uint8) for _ in range(count)]


def json_body(pixels: np.ndarray) -> bytes:
    return json.dumps({"inputs": pixels.tolist()}).encode()


@dataclass(frozen=True)
class Answer:
    status: int     # 0: no HTTP answer (connection refused, reset or timed out)
    body: bytes     # or the error's one line
    seconds: float


def post_all(url: str, bodies: list[bytes], *, clients: int, timeout_s: float,
             content_type: str = "application/json") -> list[Answer]:
    """Post every body once from `clients` threads, each on one keep-alive connection; the
    answers in the order of `bodies`."""
    parts = urlsplit(url)
    todo = iter(range(len(bodies)))
    lock = threading.Lock()
    answers: list[Answer | None] = [None] * len(bodies)

    def connect() -> http.client.HTTPConnection:
        return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port,
                                          timeout=timeout_s)

    def client() -> None:
        conn = connect()
        while (i := next_index()) is not None:
            t = time.perf_counter()
            try:
                conn.request("POST", parts.path or "/", bodies[i], {"Content-Type": content_type})
                reply = conn.getresponse()
                answers[i] = Answer(reply.status, reply.read(), time.perf_counter() - t)
                if reply.will_close:
                    conn.close()
                    conn = connect()
            except (OSError, http.client.HTTPException) as e:
                answers[i] = Answer(0, f"{type(e).__name__}: {e}".encode(), time.perf_counter() - t)
                conn.close()
                conn = connect()
        conn.close()

    def next_index() -> int | None:
        with lock:
            return next(todo, None)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [a for a in answers if a is not None]


def served(url: str, batches: list[np.ndarray], *, clients: int, timeout_s: float) -> Load:
    """The load test proper: every batch posted once as MLflow's `{"inputs": ...}` JSON."""
    bodies = [json_body(b) for b in batches]
    start = time.perf_counter()
    answers = post_all(url, bodies, clients=clients, timeout_s=timeout_s)
    seconds = time.perf_counter() - start
    ok = [a.seconds for a in answers if 200 <= a.status < 300]
    failed = [a for a in answers if not 200 <= a.status < 300]
    if failed:
        print(f"warning: {len(failed)} of {len(bodies)} requests failed, first: "
              f"{failed[0].status} {failed[0].body[:200]!r}", file=sys.stderr)
    return summarize(ok, len(failed), len(ok) * len(batches[0]), seconds)


def in_process(predict: Callable[[np.ndarray], object], batches: list[np.ndarray]) -> Load:
    """The same batches through `predict`, one after another, in this process."""
    predict(batches[0])  # warm-up, not timed
    latencies = []
    start = time.perf_counter()
    for b in batches:
        t = time.perf_counter()
        predict(b)
        latencies.append(time.perf_counter() - t)
    seconds = time.perf_counter() - start
    return summarize(latencies, 0, sum(len(b) for b in batches), seconds)


def line(name: str, load: Load) -> str:
    return (f"{name:<11} {load.images_per_second:8.1f} images/s  p50 {load.p50_ms:7.1f} ms  "
            f"p99 {load.p99_ms:7.1f} ms  ({load.requests} requests, {load.errors} errors, "
            f"{load.seconds:.1f} s)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:5001/invocations",
                    help="the served model's /invocations (loopback)")
    ap.add_argument("--model-uri", help="the same model for the in-process figure")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--batch", type=int, default=8, help="images per request")
    ap.add_argument("--timeout-s", type=float, default=30.0, help="per request")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    host = urlsplit(args.url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise VitlensError(f"--url {args.url}: the load test runs on loopback only")
    batches = pixel_batches(args.requests, args.batch)
    out = {"served": served(args.url, batches, clients=args.clients, timeout_s=args.timeout_s)}
    print(line("served", out["served"]), flush=True)
    if args.model_uri:
        import mlflow.pyfunc
        model = mlflow.pyfunc.load_model(args.model_uri)
        out["in_process"] = in_process(model.predict, batches)
        print(line("in-process", out["in_process"]))
        print(f"served / in-process: "
              f"{out['served'].images_per_second / out['in_process'].images_per_second:.2f}")
    if args.json:
        write_json(args.json, {k: {**asdict(v), "images_per_second": v.images_per_second}
                               for k, v in out.items()} | {"clients": args.clients,
                                                           "batch": args.batch})


if __name__ == "__main__":
    run_main(main)
