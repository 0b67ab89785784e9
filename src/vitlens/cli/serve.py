"""Serve a model over HTTP: MLflow's scoring protocol, encoded pictures too, batched.

    vitlens serve [--model models/model.pt | --model-uri models:/vitlens-cifar10/1]
                  [--host 127.0.0.1] [--port 5001]

POST /invocations (Content-Type: application/json), one of
    {"inputs": uint8 pixels (N, S, S, 3)}       as `mlflow models serve` takes them ("instances" too)
    {"images": ["<base64 PNG, JPEG, BMP, GIF, WebP or TIFF>"]}   any size or mode, decoded as predict does
answers {"predictions": [[p, ...], ...], "classes": [...]}: one row of probabilities per image.
A bad request gets a 4xx and {"error_code": ..., "message": "<one line>"}. GET /ping: 200.

Why not `mlflow models serve` alone: MLflow 3.17's scoring server deep-copies every request's
nested lists and parses its JSON twice, and runs concurrent requests in parallel threads that
fight over the same cores. Here the handler threads only parse, and one worker thread runs the
model once on every request that is waiting (up to --max-batch images), with all the cores.
"""
from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from vitlens.cli.models import FileModel, MlflowModel
from vitlens.cli.payload import Refused, parse
from vitlens.errors import first_line, run_main


@dataclass(eq=False)
class Job:
    x: np.ndarray
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: str | None = None


class Batcher:
    """One thread runs `predict` on every waiting request at once: (N, ...) -> (N, classes)."""

    def __init__(self, predict: Any, *, max_images: int, max_waiting: int):
        self.predict, self.max_images = predict, max_images  # per pass: a larger request runs alone
        self.jobs: queue.Queue[Job] = queue.Queue(maxsize=max_waiting)
        self.held: Job | None = None
        threading.Thread(target=self.work, name="model", daemon=True).start()

    def __call__(self, x: np.ndarray, timeout_s: float) -> np.ndarray:
        job = Job(x)
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise Refused(503, "BUSY", f"{self.jobs.maxsize} requests waiting; retry") from None
        if not job.done.wait(timeout_s):
            raise Refused(503, "TIMEOUT", f"no answer within {timeout_s:g} s")
        if job.error is not None:
            raise Refused(500, "INTERNAL_ERROR", f"the model failed: {job.error}")
        assert job.result is not None
        return job.result

    def take(self) -> list[Job]:
        """The next job, and those waiting behind it that fit in max_images with it."""
        jobs = [self.held or self.jobs.get()]
        self.held = None
        n = len(jobs[0].x)
        while n < self.max_images:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if n + len(job.x) > self.max_images:
                self.held = job  # first in the next pass
                break
            jobs.append(job)
            n += len(job.x)
        return jobs

    def work(self) -> None:
        while True:
            jobs = self.take()
            try:
                probs = np.asarray(self.predict(np.concatenate([j.x for j in jobs])))
                ends = np.cumsum([len(j.x) for j in jobs])
                for job, end in zip(jobs, ends):
                    job.result = probs[end - len(job.x):end]
            except Exception as e:  # noqa: BLE001 - every waiting request gets the one line
                for job in jobs:
                    job.error = first_line(e)
            for job in jobs:
                job.done.set()


DRAIN_BYTES = 2**26  # past this a refused body is not read; its sender may see a reset


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client reuses its connection
    timeout = 60                   # an idle or stalled connection frees its thread
    server: Server

    def do_GET(self) -> None:
        if self.path in ("/ping", "/health"):
            self.answer(200, {"status": "ok"})
        else:
            self.answer(404, {"error_code": "NOT_FOUND", "message": f"no {self.path}; "
                                                                   "POST /invocations"})

    def do_POST(self) -> None:
        self.unread = 0
        try:
            self.answer(200, self.invocations())
        except Refused as e:
            self.log_message("%d %s", e.status, e)  # one line per refused request
            self.answer(e.status, {"error_code": e.code, "message": str(e)})
            self.discard(self.unread)

    def discard(self, n: int) -> None:
        """Read and drop up to DRAIN_BYTES of a refused body: closing with bytes unread resets
        the connection, and a client still sending would see a broken pipe, not the answer."""
        n = min(n, DRAIN_BYTES)
        while n > 0 and (chunk := self.rfile.read(min(n, 2**16))):
            n -= len(chunk)

    def invocations(self) -> dict:
        cfg = self.server
        if self.path != "/invocations":
            raise Refused(404, "NOT_FOUND", f"no {self.path}; POST /invocations")
        length = int(self.headers.get("Content-Length") or -1)
        if length < 0:
            raise Refused(411, "LENGTH_REQUIRED", "send a Content-Length")
        if length > cfg.max_bytes:
            self.close_connection = True  # the body is not parsed, so the connection is done
            self.unread = length
            raise Refused(413, "REQUEST_TOO_LARGE",
                          f"{length} bytes, at most {cfg.max_bytes} per request")
        body = self.rfile.read(length)
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if kind != "application/json":
            raise Refused(415, "UNSUPPORTED_MEDIA_TYPE",
                          f"Content-Type {kind or 'missing'}; send application/json")
        x = parse(body, cfg.model.size, cfg.max_request)
        probs = cfg.batcher(x, cfg.timeout_s)
        return {"predictions": probs.tolist(), "classes": cfg.model.classes}

    def answer(self, status: int, doc: dict) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Quiet: a line per answer would flood the log under load; refusals have theirs."""


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], model: FileModel | MlflowModel, *,
                 max_request: int, max_batch: int, max_bytes: int, timeout_s: float):
        super().__init__(address, Handler)
        self.model, self.max_request = model, max_request
        self.max_bytes, self.timeout_s = max_bytes, timeout_s
        self.batcher = Batcher(model.probabilities, max_images=max_batch, max_waiting=256)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--model", type=Path, default=Path("models/model.pt"),
                       help="model file of the train stage (default: %(default)s)")
    which.add_argument("--model-uri", help="MLflow model: runs:/<run_id>/model or "
                                           "models:/<name>/<version>")
    ap.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface")
    ap.add_argument("--port", type=int, default=5001)
    ap.add_argument("--max-request", type=int, default=1024, help="images per request")
    ap.add_argument("--max-batch", type=int, default=32,
                    help="images of waiting requests run in one forward pass (32: the best "
                         "latency and throughput measured on 2 CPU cores)")
    ap.add_argument("--max-mb", type=float, default=32.0, help="largest request body")
    ap.add_argument("--timeout-s", type=float, default=30.0, help="longest wait for an answer")
    args = ap.parse_args(argv)
    model = MlflowModel(args.model_uri) if args.model_uri else FileModel(args.model, "cpu")
    server = Server((args.host, args.port), model, max_request=args.max_request,
                    max_batch=args.max_batch,
                    max_bytes=int(args.max_mb * 2**20), timeout_s=args.timeout_s)
    print(f"serving {args.model_uri or args.model} on http://{args.host}:{server.server_port}"
          f"/invocations ({len(model.classes)} classes, {model.size}x{model.size} input)",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    run_main(main)
