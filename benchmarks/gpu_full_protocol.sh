#!/usr/bin/env bash
# The paper's best row (r18_cbam_island, cifar stem) on one GPU for as many of its 200 epochs as fit
# in a time budget, bf16, channels_last, compiled, data on the GPU; writes gpu_full_protocol.json
# (accuracy, epochs done, img/s, wall time) and the run folder into OUT_DIR.
#
#   benchmarks/gpu_full_protocol.sh OUT_DIR [DATA] [MINUTES] [key=value ...]
#
# DATA defaults to $FERKIT_DATA/fer2013 (FERKIT_DATA defaults to ../shared/data); MINUTES to 9.
# Prove it on a CPU with a tiny budget, e.g.:
#   benchmarks/gpu_full_protocol.sh /tmp/gfp tests-data 0.2 stem=imagenet compile=false device=cpu
set -euo pipefail
out=${1:?usage: gpu_full_protocol.sh OUT_DIR [DATA] [MINUTES] [key=value ...]}
data=${2:-${FERKIT_DATA:-../shared/data}/fer2013}
minutes=${3:-9}
shift $(( $# < 3 ? $# : 3 ))
mkdir -p "$out"
start=$(date +%s)
python -m ferkit train --config r18_cbam_island --data "$data" --out "$out/run" --no-progress \
    time_limit_min="$minutes" precision=bf16 channels_last=true compile=true "$@" 2>&1 | tee "$out/train.log"
python - "$out" "$start" "$*" <<'PY'
import json, sys, time
from pathlib import Path

out, start, extra = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
final = json.loads((out / "run" / "final.json").read_text())
epochs = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
steady = epochs[1:] or epochs  # the first epoch includes compilation
summary = {
    "figure": "gpu_full_protocol", "config": "r18_cbam_island", "overrides": extra,
    "epochs_done": final["epochs_done"], "epochs_planned": final["config"]["epochs"],
    "best_epoch": final["best_epoch"], "val_acc": final.get("val_acc"), "test_acc": final.get("test_acc"),
    "img_per_s": sum(e["img_per_s"] for e in steady) / len(steady),
    "train_wall_s": final["wall_s"], "total_wall_s": round(time.time() - start, 1),
    "hardware": final["hardware"], "git_commit": final["git_commit"], "seed": final["seed"],
}
(out / "gpu_full_protocol.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary))
PY
