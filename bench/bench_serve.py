"""The prediction server under load, against the Predictor called in a plain loop.

Makes a finished run the way the tests do (tests/test_predict.py's make_run: an untrained
model saved with its card, so no training is needed), then measures two things on the same
images, one after the other:

- the limit: the run's Predictor in a plain loop, one image per call, each image decoded
  from its PNG bytes first (Predictor.read, as the server does);
- the server: `visionboard serve-model RUN` (a real uvicorn process) driven by --clients
  concurrent clients, each sending one image per request (multipart) on its own keep-alive
  connection, one request after the other.

The two alternate for --rounds rounds and each side's best round is kept (on a machine
shared with other work, the best round is the one least disturbed by it). Prints requests/s,
p50 and p99 latency of both, the server's mean batch size and the ratio server / loop
(target >= 0.8). --threads sets torch's threads on both sides (default: torch's own).

    .venv/bin/python bench/bench_serve.py [--requests 400] [--clients 8] [--rounds 2]
        [--image-size 96] [--model efficientnet_b0] [--max-batch 8] [--max-wait-ms 5]
        [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # make_run: a finished run as the tests make one

from engine.predict import load_predictor  # noqa: E402
from engine.sample_datasets import digit_images  # noqa: E402

TARGET = 0.8


def make_images(n: int, size: int) -> list[bytes]:
    """n different PNG files (digits, drawn at `size` px, as the sample datasets are)."""
    out = []
    per_class = max(1, -(-n // 10))
    for image, _ in digit_images(per_class=per_class, size=size, classes=range(10))[:n]:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def plain_loop(run_id: int, home: Path, images: list[bytes], n: int, device: str) -> dict:
    predictor = load_predictor(run_id, home=home, device=device)
    for data in images[:8]:  # warm-up
        predictor.predict([predictor.read(io.BytesIO(data))])
    latencies = []
    started = time.perf_counter()
    for k in range(n):
        t0 = time.perf_counter()
        predictor.predict([predictor.read(io.BytesIO(images[k % len(images)]))])
        latencies.append(time.perf_counter() - t0)
    return {"seconds": time.perf_counter() - started, "latencies": latencies}


def multipart(data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="x.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(run_id: int, home: Path, args) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)  # torch's intra-op threads in the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "--home", str(home), "serve-model", str(run_id),
         "--host", "127.0.0.1", "--port", str(port), "--device", args.device,
         "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
         "--max-queue", str(max(64, 4 * args.clients))],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"serve-model exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.3)
    raise SystemExit("serve-model did not answer within 120 s")


def drive(port: int, images: list[bytes], n: int, clients: int) -> dict:
    """n requests from `clients` threads, each on its own keep-alive connection."""
    bodies = [multipart(data) for data in images]
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(n))
    lock = threading.Lock()

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                k = next(counter, None)
            if k is None:
                break
            body, kind = bodies[k % len(bodies)]
            t0 = time.perf_counter()
            conn.request("POST", "/predict", body, {"Content-Type": kind})
            response = conn.getresponse()
            answer = response.read()
            elapsed = time.perf_counter() - t0
            with lock:
                latencies.append(elapsed)
                if response.status != 200:
                    errors.append(f"{response.status}: {answer[:200]!r}")
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"seconds": time.perf_counter() - started, "latencies": latencies, "errors": errors}


def health(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/health")
    return json.loads(conn.getresponse().read())


def line(setting: str, figure: str, value: str) -> None:
    print(f"{setting:<28} {figure:<22} {value}", flush=True)


def report(setting: str, result: dict, n: int) -> float:
    rate = n / result["seconds"]
    line(setting, "requests/s", f"{rate:.1f}")
    line(setting, "latency p50", f"{1000 * statistics.median(result['latencies']):.1f} ms")
    line(setting, "latency p99", f"{1000 * percentile(result['latencies'], 0.99):.1f} ms")
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--model", default="efficientnet_b0")
    parser.add_argument("--image-size", type=int, default=96, help="the model's input size")
    parser.add_argument("--picture-size", type=int, default=128, help="the PNGs sent")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its own)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from test_predict import make_run

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        os.environ["VISIONBOARD_HOME"] = str(home)
        run_id = make_run(home, model=args.model, image_size=args.image_size)
        images = make_images(64, args.picture_size)
        print(f"run {run_id}: {args.model} at {args.image_size} px, {args.device}, "
              f"{os.cpu_count()} CPU(s); {args.requests} requests of one "
              f"{args.picture_size} px PNG each", flush=True)  # fmt: skip

        loops, serves = [], []
        proc, port = start_server(run_id, home, args)
        try:
            drive(port, images, 2 * args.clients, args.clients)  # warm-up
            for _ in range(args.rounds):
                loops.append(plain_loop(run_id, home, images, args.requests, args.device))
                serves.append(drive(port, images, args.requests, args.clients))
            stats = health(port)["batching"]
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        errors = [e for r in serves for e in r["errors"]]
        if errors:
            print(f"{len(errors)} request(s) failed, e.g. {errors[0]}")
            return 1
        loop = min(loops, key=lambda r: r["seconds"])
        served = min(serves, key=lambda r: r["seconds"])
        loop_rate = report("Predictor loop (limit)", loop, args.requests)
        server_rate = report(f"server, {args.clients} clients", served, args.requests)
        line(f"server, {args.clients} clients", "mean batch", f"{stats['mean_batch']}")
        ratio = server_rate / loop_rate
        line("server / loop", "requests/s ratio", f"{ratio:.2f}x (target >= {TARGET}x)")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
