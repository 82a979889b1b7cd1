"""Rebuild the original FER2013 CSV (emotion,pixels,Usage) in FER+'s row order from the Kaggle folders.

Users who downloaded FER2013 as the original fer2013.csv can give it to the FER+ reader beside
fer2013new.csv, whose rows match it one to one; this repository's copy of FER2013 is Kaggle's
image folders instead. This tool rebuilds that CSV from the folders, the FER+ PNGs (lossless pixels)
and the pixel-matched map between them, so that FER2013's own labels and FER+'s votes sit row by row:

    python tools/fer2013_csv.py --fer2013 path/to/fer2013 --ferplus path/to/ferplus --out path/to/fer2013_ferplus

writes OUT/fer2013.csv and copies OUT/fer2013new.csv. Each FER+ row takes a Kaggle file mapped to its
PNG (first come, first served); rows whose PNG every mapped file was already taken for (pixel duplicates)
take a leftover file of the same split with the same pixels; rows without a PNG take the split's
unmapped files. The emotion is the Kaggle folder's, the pixels the PNG's where there is one.
"""
from __future__ import annotations

import argparse
import csv
import io
import shutil
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # FER2013 emotion 0..6
FOLDER = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}


def _grey(data: bytes | Path) -> np.ndarray:
    image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data).convert("L")
    return np.asarray(image, dtype=np.uint8)


def _pixels(fer2013: Path, row: dict, cache: dict[str, np.ndarray]) -> np.ndarray:
    if row["kaggle_path"] not in cache:
        cache[row["kaggle_path"]] = _grey(fer2013 / row["kaggle_path"])
    return cache[row["kaggle_path"]]


def build(fer2013: Path, ferplus: Path, out: Path) -> dict[str, int]:
    """Write OUT/fer2013.csv and OUT/fer2013new.csv; returns counts of how rows were filled."""
    votes = list(csv.DictReader(open(ferplus / "fer2013new.csv", newline="")))
    mapping = list(csv.DictReader(open(ferplus / "fer2013_kaggle_to_ferplus.csv", newline="")))
    pngs: dict[str, np.ndarray] = {}
    with tarfile.open(ferplus / "ferplus_png.tar.gz") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".png"):
                parts = Path(member.name).parts
                pngs[f"{parts[-2]}/{parts[-1]}"] = _grey(tar.extractfile(member).read())
    by_png: dict[str, list[dict]] = defaultdict(list)
    unmapped: dict[str, list[dict]] = defaultdict(list)
    for row in mapping:
        if row["ferplus_image"]:
            by_png[f"{row['ferplus_split']}/{row['ferplus_image']}"].append(row)
        else:
            unmapped[row["usage"]].append(row)
    used: set[str] = set()
    chosen: list[dict | None] = []
    counts = {"mapped": 0, "duplicate": 0, "no_png": 0}
    for vote in votes:
        key = f"{FOLDER[vote['Usage']]}/{vote['Image name']}"
        pick = next((r for r in by_png.get(key, []) if r["kaggle_path"] not in used), None) if vote["Image name"] else None
        if pick is not None:
            used.add(pick["kaggle_path"])
            counts["mapped"] += 1
        chosen.append(pick)
    # Rows left: a pixel duplicate's PNG (its files went to the other copy) or no PNG at all.
    leftovers: dict[str, list[dict]] = defaultdict(list)
    for row in mapping:
        if row["kaggle_path"] not in used and row["ferplus_image"]:
            leftovers[row["usage"]].append(row)
    pixels_of: dict[str, np.ndarray] = {}
    for i, (vote, pick) in enumerate(zip(votes, chosen)):
        if pick is not None:
            continue
        usage = vote["Usage"]
        if vote["Image name"]:
            target = pngs[f"{FOLDER[usage]}/{vote['Image name']}"]
            pool = leftovers[usage] or unmapped[usage]
            errors = [np.abs(_pixels(fer2013, r, pixels_of).astype(int) - target).mean() for r in pool]
            pick = pool.pop(int(np.argmin(errors)))
            counts["duplicate"] += 1
        else:
            pool = unmapped[usage] or leftovers[usage]
            pick = pool.pop(0)
            counts["no_png"] += 1
        used.add(pick["kaggle_path"])
        chosen[i] = pick
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "fer2013.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["emotion", "pixels", "Usage"])
        for vote, pick in zip(votes, chosen):
            name = vote["Image name"]
            pixels = pngs[f"{FOLDER[vote['Usage']]}/{name}"] if name else _grey(fer2013 / pick["kaggle_path"])
            emotion = CLASSES.index(Path(pick["kaggle_path"]).parts[-2])
            writer.writerow([emotion, " ".join(map(str, pixels.ravel().tolist())), vote["Usage"]])
    shutil.copy(ferplus / "fer2013new.csv", out / "fer2013new.csv")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fer2013", type=Path, required=True, help="Kaggle's FER2013 folders (train/, test/)")
    parser.add_argument("--ferplus", type=Path, required=True,
                        help="fer2013new.csv, ferplus_png.tar.gz and fer2013_kaggle_to_ferplus.csv")
    parser.add_argument("--out", type=Path, required=True, help="folder for fer2013.csv and fer2013new.csv")
    args = parser.parse_args()
    if (args.out / "fer2013.csv").exists():
        raise SystemExit(f"{args.out / 'fer2013.csv'} exists; give another --out")
    print(build(args.fer2013, args.ferplus, args.out))


if __name__ == "__main__":
    main()
