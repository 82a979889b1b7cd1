"""The Ray engine against the single-process CLI: throughput, start-up and peak memory, side by side in one run.

Every run is the real command in its own process (``ferkit predict FOLDER --out ...``, with and without
``--engine ray``), timed from start to exit; the memory figure is the peak of the summed resident memory of
that process and every process under it (Ray's raylet, object store and actors included), sampled every
0.2 s. Figures, one JSON line each:

1. start-up: the wall time of a run on one photo, per engine (Ray: starting Ray, its actors and their models);
2. throughput on ``--photos`` 640x480 photos (one pasted face each, as ``predict_speed.py`` makes them):
   photos / (wall time - that engine's start-up), for the CLI and for Ray with 1 actor x ``cores`` threads
   and ``cores`` actors x 1 thread, with the ratio to the CLI; labels compared with the CLI's, row by row;
3. memory against input count: peak memory of each engine on ``--many`` / 10 and on ``--many`` small inputs
   (96x96 face crops, ``--no-detect``): bounded by actors and batch, it should not grow with the input count.

    python benchmarks/scale.py --out results/scale.json
    python benchmarks/scale.py --photos 40 --many 200 --quick      # a smoke check
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_speed import make_photos, note, write_record  # noqa: E402

from ferkit.detect import load_image, sample_image_path  # noqa: E402
from ferkit.detect.cores import usable_cores  # noqa: E402


def tree_rss(root: int) -> int:
    """Bytes of resident memory of process ``root`` and all its descendants, now."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            parents[int(proc.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss[int(proc.name)] = int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    total, frontier = 0, {root}
    while frontier:
        total += sum(rss.get(pid, 0) for pid in frontier)
        frontier = {pid for pid, parent in parents.items() if parent in frontier}
    return total


def timed(command: list[str]) -> dict[str, Any]:
    """Run ``command``; its wall seconds, peak tree memory (MB) and return code."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    seconds = time.perf_counter() - start
    sampler.join()
    if proc.returncode not in (0, 1):  # 1: some inputs had errors, which these runs do not have
        raise RuntimeError(f"{' '.join(command)} failed:\n{err[-3000:]}")
    return {"seconds": round(seconds, 2), "peak_mb": round(peak[0] / 2**20), "stderr": err}


def write_photos(folder: Path, n: int, seed: int) -> Path:
    folder.mkdir(parents=True)
    for start in range(0, n, 200):  # made in blocks: 2,000 photos at once would hold 1.8 GB
        photos, _ = make_photos(min(200, n - start), seed + start)
        for i, photo in enumerate(photos):
            cv2.imwrite(str(folder / f"p{start + i:06d}.jpg"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    return folder


def write_crops(folder: Path, n: int) -> Path:
    """``n`` small face crops (the portrait's face, shifted a little each time), for the input-count run."""
    folder.mkdir(parents=True)
    face = cv2.cvtColor(load_image(sample_image_path()), cv2.COLOR_RGB2BGR)[60:340, 120:400]
    for i in range(n):
        dx, dy = i % 7 * 3, i // 7 % 7 * 3
        cv2.imwrite(str(folder / f"c{i:06d}.jpg"), cv2.resize(face[dy:dy + 260, dx:dx + 260], (96, 96)))
    return folder


def ferkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "ferkit", "predict", *args, "--no-progress"]


def labels(path: Path) -> list[tuple[str, int | None, str | None]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["source", "face", "label"]).to_pylist()
    return [(Path(r["source"]).name, r["face"], r["label"]) for r in table]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=2000, help="640x480 photos for the throughput runs")
    parser.add_argument("--many", type=int, default=20000, help="small inputs for the memory-against-count run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a smoke check, not a measurement")
    parser.add_argument("--out", help="also write all figures with provenance to this JSON file")
    args = parser.parse_args(argv)
    cores = usable_cores()
    figures: list[dict[str, Any]] = []

    def report(figure: dict[str, Any]) -> None:
        figures.append(figure)
        print(json.dumps(figure), flush=True)

    with tempfile.TemporaryDirectory(prefix="ferkit-scale-") as tmp:
        root = Path(tmp)
        note(f"writing {args.photos} photos and {args.many} crops")
        photos = write_photos(root / "photos", args.photos, args.seed)
        one = write_photos(root / "one", 1, args.seed)
        few = write_crops(root / "few", max(1, args.many // 10))
        crops = write_crops(root / "crops", args.many)
        engines = {"cli": [], f"ray 1x{cores}": ["--engine", "ray", "--actors", "1", "--threads-per-actor", str(cores)],
                   f"ray {cores}x1": ["--engine", "ray", "--actors", str(cores), "--threads-per-actor", "1"]}
        runs = 0

        def out(engine: str) -> Path:
            nonlocal runs
            runs += 1
            return root / f"out{runs}" / ("r.parquet" if engine == "cli" else "")

        startup = {}
        for engine, flags in engines.items():
            path = out(engine)
            path.parent.mkdir(exist_ok=True)
            startup[engine] = timed(ferkit(str(one), "--out", str(path), *flags))["seconds"]
            report({"figure": "startup_s", "engine": engine, "value": startup[engine], "inputs": 1})
        reference = None
        cli_rate = None
        for engine, flags in engines.items():
            path = out(engine)
            path.parent.mkdir(exist_ok=True)
            run = timed(ferkit(str(photos), "--out", str(path), *flags))
            rate = args.photos / max(run["seconds"] - startup[engine], 1e-9)
            found = labels(path)
            if reference is None:
                reference, cli_rate = found, rate
            report({"figure": "photos_per_s", "engine": engine, "value": round(rate, 2), "inputs": args.photos,
                    "wall_s": run["seconds"], "startup_s": startup[engine], "peak_mb": run["peak_mb"],
                    "ratio_to_cli": round(rate / cli_rate, 3), "rows": len(found),
                    "labels_as_cli": found == reference})
        for n, folder in ((max(1, args.many // 10), few), (args.many, crops)):
            for engine in ("cli", "ray"):
                path = out(engine)
                path.parent.mkdir(exist_ok=True)
                flags = [] if engine == "cli" else ["--engine", "ray"]
                run = timed(ferkit(str(folder), "--out", str(path), "--no-detect", *flags))
                report({"figure": "peak_mb", "engine": engine if engine == "cli" else f"ray {cores}x1 (default)",
                        "inputs": n, "value": run["peak_mb"], "wall_s": run["seconds"],
                        "kind": "96x96 face crops, --no-detect"})
    if args.out:
        write_record(args.out, "scale", figures, quick=args.quick, cores=cores)
    return 0


if __name__ == "__main__":
    sys.exit(main())
