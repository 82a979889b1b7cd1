"""Whether a candidate model should replace the shipped one: paired tests on validation under both label sets.

Every candidate and the baseline (default: the shipped model) read FER2013's PublicTest faces through
``Recognizer.classify_crops`` (the file's test-time views, class bias and temperature), scored twice: against
FER2013's own labels and against FER+'s majority labels (faces FER+ calls contempt, unknown or not a face left
out). For each label set the candidate is compared with the baseline face by face: the faces only it reads
right, those only the baseline reads right, and the exact two-sided McNemar p-value on those discordant pairs.

The rule: a candidate **qualifies** when it is better than the
baseline on one label set at ``--alpha`` and not worse at ``--alpha`` on the other (a difference that size
of validation data cannot tell from chance is no difference). Test data is not read.

    python benchmarks/ship_check.py --fer2013 path/to/fer2013 --ferplus path/to/fer2013_ferplus \\
        --candidates cand1.safetensors cand2.safetensors --out results/ship_check.json
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_speed import write_record  # noqa: E402
from shift_suite import labelled_faces  # noqa: E402

from ferkit.engine.predict import Recognizer  # noqa: E402


def mcnemar(baseline: torch.Tensor, candidate: torch.Tensor) -> tuple[int, int, float]:
    """(faces only the candidate reads right, faces only the baseline reads right, exact two-sided p)."""
    gained = int((candidate & ~baseline).sum())
    lost = int((baseline & ~candidate).sum())
    n, k = gained + lost, min(gained, lost)
    p = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
    return gained, lost, p


def verdict(tests: dict[str, tuple[int, int, float]], alpha: float) -> bool:
    """The rule: better on one label set at ``alpha``, and not worse at ``alpha`` on any."""
    better = any(gained > lost and p < alpha for gained, lost, p in tests.values())
    worse = any(lost > gained and p < alpha for gained, lost, p in tests.values())
    return better and not worse


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    sets = {name: labelled_faces(name, Path(args.fer2013), Path(args.ferplus))
            for name in ("fer2013_val", "ferplus_val")}
    right: dict[str, dict[str, torch.Tensor]] = {}
    for model in [args.baseline, *args.candidates]:
        recognizer = Recognizer.load(model, backend=args.backend, threads=args.threads, detect=False)
        right[model] = {name: recognizer.classify_crops(images).argmax(1) == labels
                        for name, (images, labels) in sets.items()}
        print(model, " ".join(f"{name} {hits.float().mean():.2%}" for name, hits in right[model].items()), flush=True)
    figures = []
    for model in args.candidates:
        tests = {name: mcnemar(right[args.baseline][name], right[model][name]) for name in sets}
        row = {"benchmark": "ship_check", "baseline": args.baseline, "model": model, "alpha": args.alpha,
               "qualifies": verdict(tests, args.alpha)}
        for name, (gained, lost, p) in tests.items():
            row[name] = {"accuracy": round(right[model][name].float().mean().item(), 4),
                         "baseline_accuracy": round(right[args.baseline][name].float().mean().item(), 4),
                         "faces": len(right[model][name]), "only_candidate_right": gained,
                         "only_baseline_right": lost, "p": round(p, 5)}
        print(f"{model}: " + "; ".join(f"{name} +{row[name]['only_candidate_right']} -{row[name]['only_baseline_right']} "
                                       f"p {row[name]['p']:.4f}" for name in sets)
              + f" -> {'qualifies' if row['qualifies'] else 'does not qualify'}", flush=True)
        figures.append(row)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fer2013", required=True, help="FER2013 folder or csv (its PublicTest split is used)")
    parser.add_argument("--ferplus", required=True, help="fer2013.csv with fer2013new.csv beside it")
    parser.add_argument("--baseline", default="default", help="shipped model name or a model file")
    parser.add_argument("--candidates", nargs="+", required=True, help="model files (or shipped names) to check")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of each paired test")
    parser.add_argument("--backend", default="onnx", help="onnx (fp32, every model alike) | torch | auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="also write the figures with provenance to this JSON file")
    args = parser.parse_args(argv)
    figures = measure(args)
    if args.out:
        write_record(args.out, "ship_check", figures, seed=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
