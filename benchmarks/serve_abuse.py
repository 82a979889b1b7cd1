"""`ferkit serve` under abuse: honest clients' throughput with idle sockets, slow heads and pixel bombs beside them.

Two runs on fresh servers, each ``--seconds`` long after a warm-up, with ``--clients`` honest clients
sending the load benchmark's photos (see ``serve_load.py``):

- ``alone``: the honest clients only;
- ``abused``: the same, beside ``--idle`` sockets opened and left silent (reopened when the server closes
  them), ``--slow`` clients sending a request head one line every 0.5 s (reconnecting when cut off), and
  ``--bombs`` clients sending, one after another, requests of 16 flat 6300 x 6300 PNGs (0.8 MB on the
  wire, 635 million pixels decoded).

One JSON line per run: honest requests/s, p99 latency, honest errors, the server's peak and end
resident memory, what the attackers got back; then the ratio abused / alone.

    python benchmarks/serve_abuse.py --seconds 60 --out results/serve_abuse.json
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_speed import write_record  # noqa: E402
from serve_load import percentile, photos, run_mode  # noqa: E402


def bomb_body() -> tuple[bytes, str]:
    """A multipart body of 16 flat 6300 x 6300 PNGs: under 1 MB sent, 635 MP to decode."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((6300, 6300), np.uint8)).save(buffer, format="PNG", optimize=True)
    boundary = "ferkitbomb"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"flat.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + buffer.getvalue() + b"\r\n"
    return part * 16 + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def idle_sockets(port: int, count: int, stop: threading.Event, seen: dict[str, int]) -> None:
    """Keep ``count`` silent connections open, reopening those the server closes."""
    sockets: list[socket.socket] = []
    while not stop.is_set():
        alive = []
        for s in sockets:
            try:
                s.setblocking(False)
                closed = s.recv(1024) == b""
            except BlockingIOError:
                closed = False
            except OSError:
                closed = True
            if closed:
                s.close()
                seen["idle_closed"] = seen.get("idle_closed", 0) + 1
            else:
                alive.append(s)
        sockets = alive
        while len(sockets) < count and not stop.is_set():
            try:
                sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:
                seen["idle_refused"] = seen.get("idle_refused", 0) + 1
                break
        stop.wait(0.5)
    for s in sockets:
        s.close()


def slow_head(port: int, stop: threading.Event, seen: dict[str, int]) -> None:
    """Send a request head one header line every 0.5 s, reconnecting whenever the server cuts it off."""
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\n")
                for i in range(10_000):
                    if stop.wait(0.5):
                        return
                    s.sendall(f"X-Slow-{i}: {i}\r\n".encode())
        except OSError:
            seen["slow_cut"] = seen.get("slow_cut", 0) + 1


def bomber(port: int, body: bytes, content_type: str, stop: threading.Event, seen: dict[str, int]) -> None:
    """Send pixel-bomb requests one after another, counting the answers by status."""
    while not stop.is_set():
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            connection.request("POST", "/v1/predict", body, {"Content-Type": content_type})
            status = connection.getresponse().status
            connection.close()
            seen[f"bomb_{status}"] = seen.get(f"bomb_{status}", 0) + 1
        except (OSError, http.client.HTTPException) as e:
            seen[f"bomb_{type(e).__name__}"] = seen.get(f"bomb_{type(e).__name__}", 0) + 1


def run(args: argparse.Namespace, images: list[bytes], abused: bool, bomb: tuple[bytes, str]) -> dict[str, Any]:
    """One fresh server, honest clients (and attackers when ``abused``) for ``args.seconds``."""
    seen: dict[str, int] = {}

    def attackers(port: int, stop: threading.Event) -> list[threading.Thread]:
        if not abused:
            return []
        return ([threading.Thread(target=idle_sockets, args=(port, args.idle, stop, seen), daemon=True)]
                + [threading.Thread(target=slow_head, args=(port, stop, seen), daemon=True) for _ in range(args.slow)]
                + [threading.Thread(target=bomber, args=(port, *bomb, stop, seen), daemon=True)
                   for _ in range(args.bombs)])

    outcome, series = run_mode("batching", args, images, others=attackers)
    tally, elapsed = outcome["tally"], outcome["elapsed"]
    answered = len(tally.latencies_ms)
    return {"benchmark": "serve_abuse", "run": "abused" if abused else "alone", "clients": args.clients,
            "idle_sockets": args.idle if abused else 0, "slow_heads": args.slow if abused else 0,
            "bombers": args.bombs if abused else 0, "seconds": round(elapsed, 1),
            "requests_per_s": round(answered / elapsed, 2),
            "p99_ms": round(percentile(tally.latencies_ms, 99), 1) if answered else None,
            "honest_errors": sum(tally.errors.values()), "error_kinds": tally.errors,
            "rss_peak_mb": max((mb for _, mb in series), default=None),
            "rss_end_mb": series[-1][1] if series else None, "attackers_saw": seen}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="shipped model name or a .safetensors/.pt file")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per run")
    parser.add_argument("--clients", type=int, default=16, help="honest clients")
    parser.add_argument("--idle", type=int, default=300, help="idle sockets held open")
    parser.add_argument("--slow", type=int, default=20, help="clients dripping a request head")
    parser.add_argument("--bombs", type=int, default=2, help="clients sending pixel-bomb requests")
    parser.add_argument("--out", help="also write the figures with provenance to this JSON file")
    args = parser.parse_args(argv)
    args.server_args = []  # the server's defaults: what is under test
    images, bomb = photos(), bomb_body()
    figures = [run(args, images, False, bomb), run(args, images, True, bomb)]
    alone, abused = figures
    figures.append({"benchmark": "serve_abuse", "figure": "abused_over_alone",
                    "value": round(abused["requests_per_s"] / alone["requests_per_s"], 3)
                    if alone["requests_per_s"] else None})
    for line in figures:
        print(json.dumps(line), flush=True)
    if args.out:
        write_record(args.out, "serve_abuse", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
