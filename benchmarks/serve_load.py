"""Load on `ferkit serve`: N concurrent clients on loopback for a fixed time, micro-batching on and off.

One JSON line per figure on stdout (notes go to stderr), per workload and mode: requests/s, faces/s,
p50/p95/p99 latency, errors, and the server's resident memory (RSS) at the start, the end and its
peak; the RSS series sampled every second goes into the ``--out`` record. Each mode is a fresh server
(`python -m ferkit serve` with the mode's options) given a short untimed warm-up:

- ``no_batching``: one model call per request (``--no-batching``);
- ``batching``: concurrent requests share model calls (the default);
- ``batching_fp32``: the same with the fp32 classifier (``--backend onnx``) instead of the shipped int8 file;
- ``baseline`` (with ``--baseline SRC``): the default server of another checkout of ferkit (``SRC``: its
  ``src`` folder, e.g. a ``git worktree`` of an older commit), for a ratio against an earlier pipeline
  measured in the same run.

Clients are threads, each with one keep-alive connection, each sending one image at a time as a raw
JPEG body. Workloads:

- ``photos``: the shipped astronaut portrait and copies of it (mirrored, rescaled, re-encoded); the
  server finds the faces (per photo, the detector's cost does not shrink with batching);
- ``crops``: face crops cut from them (96, 64 and 128 px), sent with ``detect=false``, as a client
  that runs its own face detector would: the classifier is nearly all of the work.

    python benchmarks/serve_load.py                       # 16 clients, 60 s per mode and workload
    python benchmarks/serve_load.py --seconds 120 --out results/serve_load.json
    git worktree add /tmp/old 4c22aa5 && python benchmarks/serve_load.py --modes baseline batching \
        --workloads photos --baseline /tmp/old/src --out results/serve_load_vs_4c22aa5.json
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PIL import Image, ImageOps

from predict_speed import note, write_record

from ferkit.detect import sample_image_path
from ferkit.serve import ServeConfig

WARMUP_S = 3.0          # untimed load before each mode's measurement
RSS_EVERY_S = 1.0       # memory sampling period
READY_TIMEOUT_S = 180   # model load + warm-up of a fresh server
# batching_fp32: the default server as it was before its int8 classifier, for a side-by-side ratio
MODES = {"no_batching": ["--no-batching"], "batching": [], "batching_fp32": ["--backend", "onnx"], "baseline": []}
WORKLOADS = ("photos", "crops")
QUERY = {"photos": "", "crops": "?detect=false"}


def photos() -> list[bytes]:
    """The sample photo and three copies that differ in bytes and size, as JPEG files."""
    original = sample_image_path().read_bytes()
    image = Image.open(io.BytesIO(original)).convert("RGB")
    copies = [ImageOps.mirror(image), image.resize((640, 640)), image.resize((400, 400))]
    out = [original]
    for n, copy in enumerate(copies):
        buffer = io.BytesIO()
        copy.save(buffer, format="JPEG", quality=85 + 5 * n)
        out.append(buffer.getvalue())
    return out


def crops() -> list[bytes]:
    """Face crops from :func:`photos` as JPEG files (96, 64 and 128 px, in turn), one per face found."""
    from ferkit.detect import crop_face, detect_faces
    from ferkit.detect.image import decode_image

    out = []
    for n, data in enumerate(photos()):
        image = decode_image(data, "photo")
        for face in detect_faces(image, min_size=48):
            crop = crop_face(image, face, (96, 64, 128)[n % 3], 0.2, True, 3)
            buffer = io.BytesIO()
            Image.fromarray(crop).save(buffer, format="JPEG", quality=90)
            out.append(buffer.getvalue())
    return out


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MB (Linux /proc), None when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, all threads) process ``pid`` has used so far (Linux /proc), None if unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Tally:
    """What the clients saw: latencies of answered requests, faces, errors by kind."""

    latencies_ms: list[float] = field(default_factory=list)
    faces: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def error(self, kind: str) -> None:
        with self.lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1


def client(port: int, images: list[bytes], offset: int, stop: threading.Event, counting: threading.Event,
           tally: Tally, query: str = "") -> None:
    """Send images one after another on one keep-alive connection until ``stop``; count while ``counting``."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    n = offset
    while not stop.is_set():
        body = images[n % len(images)]
        n += 1
        start = time.perf_counter()
        try:
            connection.request("POST", "/v1/predict" + query, body, {"Content-Type": "image/jpeg"})
            response = connection.getresponse()
            data = response.read()
            elapsed = (time.perf_counter() - start) * 1000
        except (OSError, http.client.HTTPException) as e:
            if counting.is_set() and not stop.is_set():
                tally.error(type(e).__name__)
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            continue
        if not counting.is_set() or stop.is_set():
            continue
        if response.status != 200:
            tally.error(f"http {response.status}")
            continue
        faces = sum(len(image["faces"]) for image in json.loads(data)["images"])
        with tally.lock:
            tally.latencies_ms.append(elapsed)
            tally.faces += faces
    connection.close()


def start_server(model: str, extra: list[str], port: int, source: str | None = None) -> subprocess.Popen:
    """`ferkit serve` on ``port`` (of the ferkit in the folder ``source`` when given), waited for until /readyz
    answers 200."""
    command = [sys.executable, "-m", "ferkit", "serve", "--model", model, "--port", str(port), *extra]
    env = None if source is None else {**os.environ, "PYTHONPATH": str(Path(source).resolve())}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}: {' '.join(command)}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            pass
        time.sleep(0.25)
    process.terminate()
    raise RuntimeError(f"the server was not ready within {READY_TIMEOUT_S} s")


def server_counts(port: int) -> tuple[int, int]:
    """The server's model calls and images answered so far (from /readyz)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/readyz")
    ready = json.loads(connection.getresponse().read())
    connection.close()
    return ready["model_calls"], ready["images"]


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, by linear interpolation."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def run_mode(mode: str, args: argparse.Namespace, images: list[bytes], query: str = "",
             others: Callable[[int, threading.Event], list[threading.Thread]] | None = None,
             ) -> tuple[dict[str, Any], list[list[float]]]:
    """Load one fresh server for ``args.seconds``; the tallies and the RSS series ([seconds, MB] pairs).

    ``others(port, stop)`` adds threads that run beside the honest clients until ``stop`` (e.g. attackers).
    """
    port = free_port()
    server = start_server(args.model, MODES[mode] + args.server_args, port,
                          getattr(args, "baseline", None) if mode == "baseline" else None)
    stop, counting, tally = threading.Event(), threading.Event(), Tally()
    threads = [threading.Thread(target=client, args=(port, images, n, stop, counting, tally, query), daemon=True)
               for n in range(args.clients)]
    threads += others(port, stop) if others is not None else []
    series: list[list[float]] = []
    try:
        for thread in threads:
            thread.start()
        time.sleep(WARMUP_S)
        counting.set()
        calls_before, images_before = server_counts(port)
        cpu_before = cpu_seconds(server.pid)
        start = time.monotonic()
        while (now := time.monotonic()) - start < args.seconds:
            mb = rss_mb(server.pid)
            if mb is not None:
                series.append([round(now - start, 1), round(mb, 1)])
            time.sleep(min(RSS_EVERY_S, max(0.0, args.seconds - (time.monotonic() - start))))
        elapsed = time.monotonic() - start
        cpu_after = cpu_seconds(server.pid)
        calls_after, images_after = server_counts(port)
        stop.set()
        mb = rss_mb(server.pid)
        if mb is not None:
            series.append([round(elapsed, 1), round(mb, 1)])
        for thread in threads:
            thread.join(65)
    finally:
        stop.set()
        server.terminate()
        server.wait(30)
    calls = calls_after - calls_before
    per_call = (images_after - images_before) / calls if calls else None
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return {"tally": tally, "elapsed": elapsed, "images_per_call": per_call, "model_calls": calls,
            "server_cpu_s": cpu}, series


def run_figures(outcome: dict[str, Any], series: list[list[float]], context: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures of one load run (the outcome and RSS series of :func:`run_mode`), each printed as it is made."""
    figures: list[dict[str, Any]] = []

    def emit(figure: str, value: float | int | None, unit: str, **more: Any) -> None:
        line = {"figure": figure, "value": value, "unit": unit, **context, **more}
        figures.append(line)
        print(json.dumps(line), flush=True)

    tally, elapsed = outcome["tally"], outcome["elapsed"]
    answered = len(tally.latencies_ms)
    emit("requests_per_s", round(answered / elapsed, 2), "requests/s", answered=answered)
    emit("faces_per_s", round(tally.faces / elapsed, 2), "faces/s", faces=tally.faces)
    for q in (50, 95, 99):
        value = round(percentile(tally.latencies_ms, q), 1) if answered else None
        emit(f"latency_p{q}", value, "ms")
    emit("errors", sum(tally.errors.values()), "requests", by_kind=tally.errors)
    per_call = outcome["images_per_call"]
    emit("images_per_model_call", None if per_call is None else round(per_call, 2), "images",
         model_calls=outcome["model_calls"])
    cpu = outcome["server_cpu_s"]
    if cpu is not None and answered:
        # What a request costs the server in CPU time, and how many cores it kept busy: when both
        # modes keep every core busy, their throughputs stand in the inverse ratio of these costs.
        emit("server_cpu_ms_per_request", round(cpu / answered * 1000, 2), "ms")
        emit("server_cores_busy", round(cpu / elapsed, 2), "cores", cores=os.cpu_count())
    if series:
        values = [mb for _, mb in series]
        emit("rss_start", values[0], "MB")
        emit("rss_end", values[-1], "MB")
        emit("rss_max", max(values), "MB")
        # Flat memory: the second half's mean against the first half's, over a run of this length.
        half = len(values) // 2
        if half:
            drift = statistics.mean(values[half:]) - statistics.mean(values[:half])
            emit("rss_drift", round(drift, 1), "MB", note="mean of the second half minus mean of the first")
    return figures


def measure(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, dict[str, list[list[float]]]]]:
    """Every figure, each workload and mode; and each one's RSS series."""
    figures: list[dict[str, Any]] = []
    memory: dict[str, dict[str, list[list[float]]]] = {}
    load_1m = os.getloadavg()[0]
    if load_1m > 0.5 * (os.cpu_count() or 1):
        note(f"the machine is busy (1-minute load {load_1m:.2f}): these figures measure contention")
    for workload in args.workloads:
        images = photos() if workload == "photos" else crops()
        rates = {}
        for mode in args.modes:
            note(f"{workload}, {mode}: {args.clients} clients for {args.seconds:g} s")
            outcome, series = run_mode(mode, args, images, QUERY[workload])
            memory.setdefault(workload, {})[mode] = series
            rates[mode] = len(outcome["tally"].latencies_ms) / outcome["elapsed"]
            context = {"workload": workload, "mode": mode, "clients": args.clients, "seconds": args.seconds,
                       "images": len(images), "model": args.model}
            figures += run_figures(outcome, series, context)
        reference = "baseline" if "baseline" in rates else "no_batching"
        base = rates.get(reference)
        for mode, rate in rates.items():
            if mode != reference and base:
                line = {"figure": "requests_per_s_ratio", "value": round(rate / base, 3),
                        "unit": f"{mode}/{reference}", "workload": workload, "mode": mode,
                        "clients": args.clients, "seconds": args.seconds}
                figures.append(line)
                print(json.dumps(line), flush=True)
    return figures, memory


def main(argv: list[str] | None = None) -> int:
    """Measure and print every figure; with ``--out`` also write them with provenance."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds per mode (default 60)")
    parser.add_argument("--model", default="default", help="shipped model name or a .safetensors/.pt file")
    parser.add_argument("--modes", nargs="+", default=[m for m in MODES if m != "baseline"], choices=list(MODES))
    parser.add_argument("--baseline", metavar="SRC",
                        help="the src folder of another ferkit checkout, served by the baseline mode")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--server-args", nargs=argparse.REMAINDER, default=[],
                        help="more `ferkit serve` options for both modes (put last)")
    parser.add_argument("--out", help="also write all figures with provenance to this JSON file")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0:
        parser.error("--clients must be >= 1 and --seconds > 0")
    if ("baseline" in args.modes) != (args.baseline is not None):
        parser.error("the baseline mode and --baseline SRC go together")
    try:
        figures, memory = measure(args)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.out:
        defaults = ServeConfig()
        server = {"max_batch": defaults.max_batch, "max_wait_ms": defaults.max_wait_ms,
                  "queue_size": defaults.queue_size, "extra_args": args.server_args}
        write_record(args.out, "serve_load", figures, server=server, warmup_s=WARMUP_S, rss_series_mb=memory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
