"""Repository tooling: record finished runs under ``results/`` and generate the tables of README.md and RESULTS.md.

    python tools/report.py record runs/NAME [runs/OTHER ...] --group fer2013
    python tools/report.py readme            # rewrite every results block of README.md and RESULTS.md

Not part of the installed package: it knows this repository's layout and the machine its figures came from.
Generated blocks sit between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``; :func:`update_readme`
rewrites every block of one file from the JSON files, so no figure in those documents is typed by hand.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

from ferkit.errors import FerkitError
from ferkit.fileio import write_text
from ferkit.paper.records import record_run


def _load(folder: Path) -> list[dict[str, Any]]:
    # links are written relative to the README, which sits beside the results folder
    return [{**json.loads(p.read_text()), "_file": f"{folder.parent.name}/{folder.name}/{p.name}"}
            for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def runs_table(results_dir: Path, group: str) -> str:
    """Markdown table of the runs recorded in ``results/<group>/``: model, budget, accuracy, command."""
    rows = ["| run | model | loss | epochs | CPU min | val acc % | test acc % | seed | command |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in _load(results_dir / group):
        cfg = r["config"]
        model = f"{cfg['model']} {cfg['attention']}, {cfg['stem']} stem"
        rows.append(f"| [{Path(r['_file']).stem}]({r['_file']}) | {model} | {cfg['loss']} | "
                    f"{r['epochs_done']} (best {r['best_epoch']}) | {r['wall_s'] / 60:.0f} | {_pct(r.get('val_acc'))} | "
                    f"{_pct(r.get('test_acc'))} | {r['seed']} | `{r.get('command') or '-'}` |")
    return "\n".join(rows)


def budget_minutes(record: dict[str, Any]) -> float:
    """Training minutes of a recorded run, counting the runs it was initialised from."""
    return (record["wall_s"] + record.get("prior_wall_s", 0.0)) / 60


def frontier(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs that no faster-or-equal run beats on validation accuracy, fastest first."""
    best, front = -1.0, []
    for r in sorted(records, key=lambda r: (budget_minutes(r), -r["val_acc"])):
        if r["val_acc"] > best:
            front.append(r)
            best = r["val_acc"]
    return front


CPU_BUDGET_MIN = 60.0
"""The training-time budget of the CPU recipe (configs/fer2013_cpu_60min.yaml), minutes."""


def budget_pick(records: list[dict[str, Any]], minutes: float = CPU_BUDGET_MIN) -> dict[str, Any] | None:
    """The run with the best validation accuracy among those that trained within ``minutes``."""
    within = [r for r in records if budget_minutes(r) <= minutes]
    return max(within, key=lambda r: r["val_acc"]) if within else None


def cpu_budget_table(results_dir: Path) -> str:
    """Markdown table of ``results/cpu_budget/``: every run by minutes, the frontier marked, the 60-minute pick."""
    records = _load(results_dir / "cpu_budget")
    if not records:
        return "_not measured yet: no runs in results/cpu_budget/_"
    front = {r["_file"] for r in frontier(records)}
    pick = budget_pick(records)
    rows = ["| run | stem | attention, loss | input, pad | epochs | precision | train min | val acc % | "
            "test acc % | frontier | command |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=budget_minutes):
        cfg = r["config"]
        minutes = f"{budget_minutes(r):.0f}"
        if r.get("prior_wall_s"):
            minutes += f" ({r['prior_wall_s'] / 60:.0f} of them in {r['init_run']})"
        mark = "yes" if r["_file"] in front else ""
        if pick is not None and r["_file"] == pick["_file"]:
            mark += ", **60-min pick**"
        rows.append(f"| [{Path(r['_file']).stem}]({r['_file']}) | {cfg['stem']} | {cfg['attention']}, {cfg['loss']} | "
                    f"{cfg['input_size']}, {cfg['pad']} | {r['epochs_done']} (best {r['best_epoch']}) | "
                    f"{cfg['precision']} | {minutes} | {_pct(r.get('val_acc'))} | {_pct(r.get('test_acc'))} | "
                    f"{mark.lstrip(', ')} | `{r.get('command') or '-'}` |")
    rows.append("\nMinutes are wall-clock training time on this 2-core CPU, validation passes included; runs that "
                "shared the CPU with other work took longer than they would alone. Frontier: no run that took "
                "at most as long has a better validation (PublicTest) accuracy. Test is PrivateTest.\n\n"
                "![accuracy against training minutes](results/cpu_budget/frontier.png)")
    return "\n".join(rows)


def plot_frontier(results_dir: str | Path) -> Path | None:
    """Draw ``results/cpu_budget/frontier.png``: test and validation accuracy against training minutes."""
    from matplotlib.figure import Figure

    from ferkit.fileio import save_figure

    folder = Path(results_dir) / "cpu_budget"
    records = _load(folder)
    if not records:
        return None
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for r in records:
        x = budget_minutes(r)
        ax.scatter([x], [100 * r["test_acc"]], color="tab:blue", zorder=3)
        ax.scatter([x], [100 * r["val_acc"]], facecolors="none", edgecolors="tab:orange", zorder=3)
        ax.annotate(Path(r["_file"]).stem, (x, 100 * r["test_acc"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    front = frontier(records)
    ax.step([budget_minutes(r) for r in front], [100 * r["test_acc"] for r in front], where="post",
            color="tab:blue", alpha=0.6, label="frontier (chosen on val), test accuracy")
    ax.scatter([], [], color="tab:blue", label="PrivateTest (test)")
    ax.scatter([], [], facecolors="none", edgecolors="tab:orange", label="PublicTest (val)")
    ax.axvline(CPU_BUDGET_MIN, color="grey", linestyle=":", label=f"{CPU_BUDGET_MIN:.0f}-minute budget")
    ax.set(xlabel="training minutes (2-core CPU)", ylabel="FER2013 accuracy (%)",
           title="FER2013 accuracy against CPU training time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, folder / "frontier.png")


def serve_memory_runs(record: dict[str, Any]) -> list[tuple[str, str, list[list[float]]]]:
    """(workload, mode, [[seconds, MB], ...]) of each load run with memory samples in a serve_load record."""
    series = record.get("rss_series_mb", {})
    if series and all(isinstance(v, list) for v in series.values()):  # records from before workloads: photos
        series = {"photos": series}
    return [(workload, mode, points) for workload, modes in series.items() for mode, points in modes.items()
            if points]


def plot_serve_memory(results_dir: str | Path) -> Path | None:
    """Draw ``results/serve_load.png``: the server's resident memory over each load run, per workload and mode."""
    from matplotlib.figure import Figure

    from ferkit.fileio import save_figure

    path = Path(results_dir) / "serve_load.json"
    if not path.is_file():
        return None
    runs = serve_memory_runs(json.loads(path.read_text()))
    if not runs:
        return None
    fig = Figure(figsize=(7.5, 3.8), layout="constrained")
    ax = fig.subplots()
    for workload, mode, points in runs:
        ax.plot([t for t, _ in points], [mb for _, mb in points], label=f"{workload}, {mode.replace('_', ' ')}",
                linestyle="-" if workload == "photos" else "--")
    ax.set(xlabel="seconds under load (16 clients)", ylabel="server resident memory (MB)",
           title="ferkit serve: memory under load", ylim=(0, None))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, Path(results_dir) / "serve_load.png")


def json_lines_table(results_dir: Path, name: str) -> str:
    """Markdown table of a benchmark's figures (``results/<name>.json``, key ``figures``)."""
    path = results_dir / f"{name}.json"
    if not path.is_file():
        return f"_not measured yet: no {path.as_posix()}_"
    data = json.loads(path.read_text())
    rows = ["| figure | value | unit | setting |", "|---|---|---|---|"]
    for f in data["figures"]:
        setting = ", ".join(f"{k} {v}" for k, v in f.items() if k not in ("figure", "value", "unit") and
                            not isinstance(v, (dict, list)))
        value = f"{f['value']:.3g}" if isinstance(f["value"], float) else str(f["value"])
        rows.append(f"| {f['figure']} | {value} | {f.get('unit', '')} | {setting} |")
    rows.append(f"\nMeasured by `{data.get('command', '?')}` at commit {str(data.get('git_commit'))[:10]} "
                f"on {data.get('hardware', '?')}.")
    return "\n".join(rows)


def predict_compare_table(results_dir: Path) -> str:
    """ferkit's shipped model against the peer package fer: accuracy and end-to-end speed, side by side."""
    speed_path, acc_path = results_dir / "predict_speed.json", results_dir / "fer_accuracy.json"
    if not speed_path.is_file() or not acc_path.is_file():
        return f"_not measured yet: needs {speed_path.as_posix()} and {acc_path.as_posix()}_"
    speed, acc = json.loads(speed_path.read_text()), json.loads(acc_path.read_text())

    def figure(data: dict[str, Any], name: str, tool: str) -> dict[str, Any] | None:
        return next((f for f in data["figures"] if f.get("figure") == name and f.get("tool") == tool), None)

    ours = next((f for f in acc["figures"] if f["tool"] == "ferkit"), None)
    theirs = {f["setting"]: f for f in acc["figures"] if f["tool"] == "fer"}
    fer_acc = ", ".join(f"{100 * f['accuracy']:.2f} % ({name.replace('_', ' ')})" for name, f in theirs.items())
    rows = [f"| | ferkit, model shipped at commit {str(acc.get('git_commit'))[:10]} | fer 25.10.3 |", "|---|---|---|",
            f"| FER2013 PrivateTest accuracy | {_pct(ours and ours['accuracy'])} % | {fer_acc or '-'} |"]
    ms = {tool: figure(speed, "photo_ms", tool) for tool in ("ferkit", "fer")}
    found = {tool: figure(speed, "photos_one_face", tool) for tool in ("ferkit", "fer")}
    if ms["ferkit"] and ms["fer"]:
        rows.append(f"| ms per 640x480 photo, end to end (decode excluded) | {ms['ferkit']['value']:.1f} | "
                    f"{ms['fer']['value']:.1f} |")
        rows.append(f"| ferkit / fer time | {ms['ferkit']['value'] / ms['fer']['value']:.2f} | |")
    portrait = {tool: next((f for f in speed["figures"] if f.get("figure") == "photo_ms" and f.get("tool") == tool
                            and f.get("size") == "256x256"), None) for tool in ("ferkit", "fer")}
    if portrait["ferkit"] and portrait["fer"]:
        rows.append(f"| ms per 256x256 posed portrait, end to end | {portrait['ferkit']['value']:.1f} | "
                    f"{portrait['fer']['value']:.1f} |")
        rows.append(f"| ferkit / fer time, portraits | {portrait['ferkit']['value'] / portrait['fer']['value']:.2f} "
                    "| |")
    if found["ferkit"] and found["fer"]:
        rows.append("| photos whose one face was found | " + " | ".join(
            f"{found[t]['on_target']} of {found[t]['photos']}" for t in ("ferkit", "fer")) + " |")
    rows.append(f"\nAccuracy: `{acc['command']}` at commit {str(acc.get('git_commit'))[:10]}; fer classifies each "
                "48x48 test crop given as the whole face box, with its default box offsets (10 px of its padding "
                "on each side, as after its own detection) and with none (exactly the crop). Speed: "
                f"`{speed['command']}` at commit {str(speed.get('git_commit'))[:10]}, same photos, same threads.")
    return "\n".join(rows)


def model_card(name: str = "default") -> str:
    """Markdown model card of a shipped model, read from the metadata inside its file."""
    from safetensors import safe_open

    from ferkit.engine.modelfile import pretrained_path

    try:
        path = pretrained_path(name)
    except FerkitError as e:
        return f"_{e}_"
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
    train = meta.get("training", {})
    cal = meta.get("calibration", {})
    rows = [
        ("file", f"`src/ferkit/weights/{path.name}` ({path.stat().st_size / 1e6:.1f} MB, {meta.get('weights')} weights)"),
        ("architecture", f"{meta['model']}, attention {meta['attention']} (r={meta['reduction']}), {meta['stem']} stem"),
        ("input", f"{meta['input_size']}x{meta['input_size']}, {'grey' if meta['in_chans'] == 1 else 'RGB'}, "
                  f"(x/255 - {meta['mean']}) / {meta['std']}; face box + {meta.get('crop_margin')} margin per side"),
        ("classes", ", ".join(meta["classes"])),
        ("trained on", _trained_on(train.get("config") or {}, train.get("git_commit"))),
        ("data terms", "FER2013 images: released for the 2013 Kaggle/ICML representation-learning challenge, under "
                       "its terms (no open licence; check them before commercial use)"
                       + ("; FER+ votes: Microsoft, MIT licence" if _uses_ferplus(train) else "")),
        ("training command", f"`{train.get('command', '?')}`"),
        ("training", f"{train.get('epochs_done', '?')} epochs (best {train.get('best_epoch', '?')}), "
                     f"{train.get('wall_s', 0) / 60:.0f} min on {train.get('hardware', '?')}, seed {train.get('seed')}, "
                     f"commit {str(train.get('git_commit'))[:10]}"),
        *_lineage(train),
        ("test-time augmentation", meta.get("tta", "none")),
        ("FER2013 PublicTest (val) accuracy", f"{_pct(meta.get('val_acc'))} %"
                                              + _mean_class(meta.get("val_mean_class_acc"))),
        ("FER2013 PrivateTest (test) accuracy", f"{_pct(meta.get('test_acc'))} %"
                                                + _mean_class(meta.get("test_mean_class_acc"))),
    ]
    if "class_bias_tau" in cal:
        rows.append(("class bias", _class_bias_words(cal["class_bias_tau"])))
    rows.append(("temperature", f"{meta.get('temperature', 1.0):.3f} (fitted on PublicTest)"))
    if cal:
        rows.append(("PrivateTest ECE / NLL", f"{cal['test_ece_before']:.4f} -> {cal['test_ece_after']:.4f} / "
                                              f"{cal['test_nll_before']:.4f} -> {cal['test_nll_after']:.4f} "
                                              "(before -> after temperature scaling)"))
    return "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def _class_bias_words(tau: float) -> str:
    """The model card's words for a post-hoc logit adjustment of ``-tau * log(training prior)``."""
    if round(tau, 2) == 0:
        return "none (post-hoc logit adjustment considered; tau 0 chosen on PublicTest)"
    return (f"-{tau:.2g} x log(training prior) added to the logits (post-hoc logit adjustment; tau chosen on "
            "PublicTest)")


def _uses_ferplus(train: dict[str, Any]) -> bool:
    """Whether a shipped model's run, or a run it started from, trained on FER+ votes."""
    node: dict[str, Any] | None = train
    while node:
        if (node.get("config") or {}).get("soft_labels") or (node.get("config") or {}).get("classes"):
            return True
        node = node.get("started_from")
    return False


def _trained_on(config: dict[str, Any], commit: str | None = None) -> str:
    """What a run trained on, in words, from its config. A teacher named by a shipped name is the model of that
    name at the run's ``commit``, which need not be the one shipped under that name now."""
    teachers = config.get("teacher") or []
    if not teachers:
        return _labels_trained_on(config)
    mix = config.get("teacher_mix", 0.5)
    names = ", ".join(f"{t} (as shipped at commit {commit[:10]})" if commit and "/" not in t else _model_label(t)
                      for t in teachers)
    return (f"{_labels_trained_on(config)}; distilled: {mix:.0%} of the target is the mean probabilities of the "
            f"teacher models {names} on each training image")


def _labels_trained_on(config: dict[str, Any]) -> str:
    """What a run trained on, in words, from its config, leaving out any teacher models."""
    if config.get("hard_labels") == "fer2013" and config.get("soft_labels"):
        mix = config.get("soft_mix", 1.0)
        return (f"FER2013 Training split: its images, and a target of {1 - mix:.0%} FER2013's label and "
                f"{mix:.0%} the FER+ annotators' vote distribution; model selected on PublicTest (validation) "
                "accuracy against FER2013's labels")
    if config.get("soft_labels"):
        return "FER+ Training split, the annotators' vote distributions; model selected on FER+ validation accuracy"
    return "FER2013 Training split; model selected on PublicTest (validation) accuracy"


def _mean_class(value: float | None) -> str:
    return "" if value is None else f", mean per-class {_pct(value)} %"


def _benchmark_record(results_dir: Path, name: str) -> dict[str, Any] | str:
    """A benchmark's JSON record ``results_dir/<name>.json``, or the README's line saying it is missing."""
    path = results_dir / f"{name}.json"
    if not path.is_file():
        return f"_not measured yet: no {path.as_posix()}_"
    return json.loads(path.read_text())


def api_accuracy_table(results_dir: Path) -> str:
    """Per-class accuracy of the shipped model through the Python API (``results/api_accuracy.json``)."""
    data = _benchmark_record(results_dir, "api_accuracy")
    if isinstance(data, str):
        return data
    figures = data["figures"]
    classes = list(figures[0]["per_class_accuracy"])
    rows = ["| split | images | accuracy | mean per-class | macro-F1 | " + " | ".join(classes) + " |",
            "|---|---:|---:|---:|---:|" + "---:|" * len(classes)]
    for f in figures:
        rows.append(f"| {f['split']} | {f['images']} | {_pct(f['accuracy'])} | {_pct(f['mean_class_accuracy'])} | "
                    f"{f['macro_f1']:.3f} | " + " | ".join(_pct(f["per_class_accuracy"].get(c)) for c in classes)
                    + " |")
    rows.append(f"\nAccuracies in %. `{data.get('command', '?')}` at commit {str(data.get('git_commit'))[:10]}: "
                f"every image file through `Recognizer(detect=False)`, backend {figures[0]['backend']}, "
                f"test-time views {figures[0]['tta']}.")
    return "\n".join(rows)


def _model_label(model: str) -> str:
    """A short name for a benchmarked model: a shipped model's name, a run's folder for its checkpoint
    (``runs/s1/best.pt``), else the file's stem (``runs/pair.safetensors``)."""
    path = Path(model)
    if "/" not in model:
        return model
    return path.parent.name if path.suffix == ".pt" else path.stem


def shift_suite_table(results_dir: Path) -> str:
    """Accuracy of each model under each shift of FER2013's faces, one column per model and label set
    (``results/shift_suite/*.json``, one file per model), the drop from the unshifted row beside it. A record's
    ``label`` names its column where the model's own name no longer says which model it was (a shipped name
    whose file has since been replaced)."""
    records = _load(results_dir / "shift_suite")
    if not records:
        return f"_not measured yet: no {(results_dir / 'shift_suite').as_posix()}/*.json_"
    labels = [r.get("label") or _model_label(r["figures"][0]["model"]) for r in records]
    columns = [(label, name) for label, r in zip(labels, records) for name in dict.fromkeys(
        f["set"] for f in r["figures"])]
    cell = {(label, f["set"], f["shift"]): f for label, r in zip(labels, records) for f in r["figures"]}
    shifts = list(dict.fromkeys(f["shift"] for r in records for f in r["figures"]))
    rows = ["| shift | " + " | ".join(f"{label}: {name}" for label, name in columns) + " |",
            "|---|" + "---:|" * len(columns)]
    for shift in shifts:
        values = []
        for label, name in columns:
            f = cell.get((label, name, shift))
            values.append("" if f is None else f"{_pct(f['accuracy'])}" + ("" if shift == "none" else
                                                                         f" ({-100 * f['drop']:+.1f})"))
        rows.append(f"| {shift} | " + " | ".join(values) + " |")
    worst = {f"{label}: {n}": max(cell[(label, n, s)]["drop"] for s in shifts if (label, n, s) in cell)
             for label, n in columns}
    rows.append("| largest drop | " + " | ".join(f"{100 * v:.1f}" for v in worst.values()) + " |")
    first = records[0]
    rows.append(f"\nAccuracy in %, points from the unshifted row in brackets; {first['figures'][0]['images']} faces "
                f"per set, shifts seeded ({first.get('seed', 0)}). "
                + "; ".join(f"`{r.get('command', '?')}` at commit {str(r.get('git_commit'))[:10]}" for r in records)
                + f", on {first.get('hardware', '?')}.")
    return "\n".join(rows)


def finetune_recipe_table(results_dir: Path) -> str:
    """Fine-tuning recipes on small carved data sets, scored on held-out faces (``results/finetune_recipe/*.json``,
    one file per sweep)."""
    records = _load(results_dir / "finetune_recipe")
    if not records:
        return f"_not measured yet: no {(results_dir / 'finetune_recipe').as_posix()}/*.json_"
    figures = [f for r in records for f in r["figures"]]
    runs: dict[str, list[dict[str, Any]]] = {}
    for f in figures:
        if isinstance(f["subset"], int):
            runs.setdefault(f["recipe"], []).append(f)
    rows = ["| recipe | config overrides | held-out accuracy % | mean per-class % | per data set % | best epochs "
            "| last epoch % |", "|---|---|---:|---:|---|---|---:|"]
    none = next((f for f in figures if f["recipe"] == "none"), None)
    if none:
        rows.append(f"| none: the init model as it is | | {_pct(none['accuracy'])} | "
                    f"{_pct(none['mean_class_accuracy'])} | | | |")
    for f in (f for f in figures if f["subset"] == "mean"):
        each = runs.get(f["recipe"], [])
        rows.append(f"| {f['recipe']} | `{' '.join(f['overrides'])}` | {_pct(f['accuracy'])} +/- "
                    f"{_pct(f['accuracy_std'])} | {_pct(f['mean_class_accuracy'])} | "
                    f"{', '.join(_pct(r['accuracy']) for r in each)} | {', '.join(str(r['best_epoch']) for r in each)} "
                    f"| {_pct(f.get('last_epoch_accuracy'))} |")
    first = records[0]
    rows.append(f"\n{first.get('subsets')} data sets of {first.get('size')} FER2013 PublicTest faces with FER+ "
                f"majority labels, each split 90/10 into train and val (best epoch), fine-tuned from "
                f"`{first.get('init')}` and scored on the same {first.get('holdout')} other PublicTest faces; "
                "+/- is the sample standard deviation over data sets. "
                + "; ".join(f"`{r.get('command', '?')}` (overrides of the {r.get('base', 'defaults')!r} config) at "
                            f"commit {str(r.get('git_commit'))[:10]}, seed {r.get('seed')}" for r in records)
                + f", on {first.get('hardware', '?')}.")
    return "\n".join(rows)


def detector_table(results_dir: Path) -> str:
    """Faces found by each detector, by condition (``results/detector_recall.json``)."""
    data = _benchmark_record(results_dir, "detector_recall")
    if isinstance(data, str):
        return data
    run = data["figures"][0]
    detectors = run["detectors"]
    conditions = list(next(iter(detectors.values()))["recall"])
    rows = ["| faces found | " + " | ".join(detectors) + " |", "|---|" + "---:|" * len(detectors)]
    for condition in conditions:
        rows.append(f"| {condition} | " + " | ".join(f"{_pct(d['recall'][condition])} %" for d in detectors.values())
                    + " |")
    rows.append("| false faces on " + str(run["backgrounds"]) + " backgrounds | "
                + " | ".join(str(d["false_faces"]) for d in detectors.values()) + " |")
    if all("extra_faces" in d for d in detectors.values()):
        rows.append("| extra faces in the portraits and group frames | "
                    + " | ".join(str(d["extra_faces"]) for d in detectors.values()) + " |")
    rows.append("| ms per 640x480 photo | " + " | ".join(str(d["ms_per_photo"]) for d in detectors.values()) + " |")
    rows.append(f"\n{run['photos_per_condition']} photos per condition, {run['group_frames']} group frames of 15 faces, "
                f"seed {run['seed']}. `{data.get('command', '?')}` at commit {str(data.get('git_commit'))[:10]} "
                f"on {data.get('hardware', '?')}; both detectors as `Recognizer` runs them by default.")
    return "\n".join(rows)


def serve_load_table(results_dir: Path, name: str = "serve_load") -> str:
    """`ferkit serve` under load, micro-batching on and off (or against another checkout's server), per workload
    (``results/<name>.json``)."""
    data = _benchmark_record(results_dir, name)
    if isinstance(data, str):
        return data
    figures: dict[tuple[str, str], dict[str, Any]] = {}
    ratios: dict[str, Any] = {}
    for f in data["figures"]:
        workload = f.get("workload", "photos")  # records from before workloads were photos only
        if f["figure"] == "requests_per_s_ratio":
            ratios[workload] = (f["value"], f.get("unit", "batching/no_batching"))
        elif "mode" in f:
            figures.setdefault((workload, f["mode"]), {})[f["figure"]] = f["value"]
    header = ("| workload | mode | requests/s | faces/s | p50 ms | p99 ms | errors | images per model call | "
              "server CPU ms per request | cores busy | memory start -> end MB |")
    rows = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for (workload, mode), f in figures.items():
        rows.append(f"| {workload} | {mode.replace('_', ' ')} | {f.get('requests_per_s')} | {f.get('faces_per_s')} | "
                    f"{f.get('latency_p50')} | {f.get('latency_p99')} | {f.get('errors')} | "
                    f"{f.get('images_per_model_call')} | {f.get('server_cpu_ms_per_request', '-')} | "
                    f"{f.get('server_cores_busy', '-')} | {f.get('rss_start')} -> {f.get('rss_end')} |")
    first = data["figures"][0]
    gains = ", ".join(f"{workload} {unit.replace('_', ' ').replace('/', ' / ')} {ratio}x"
                      for workload, (ratio, unit) in ratios.items())
    rows.append(f"\n{first.get('clients')} clients, {first.get('seconds'):.0f} s per row; throughput ratios: "
                f"{gains}. `{data.get('command', '?')}` at commit {str(data.get('git_commit'))[:10]} on "
                f"{data.get('hardware', '?')}.")
    return "\n".join(rows)


PROJECTION_IMAGES = 10_000_000
PROJECTION_NODES = ((1, 16), (10, 16), (100, 16))  # nodes x cores each


def scale_table(results_dir: Path) -> str:
    """The Ray engine against the single-process CLI, and a projection to 10 million photos (``results/scale.json``)."""
    data = _benchmark_record(results_dir, "scale")
    if isinstance(data, str):
        return data
    figures = data["figures"]
    startup = {f["engine"]: f["value"] for f in figures if f["figure"] == "startup_s"}
    rows = ["| engine | start-up s | photos/s, start-up excluded | ratio to the CLI | labels as the CLI's | "
            "peak memory MB |", "|---|---:|---:|---:|---|---:|"]
    rates = {}
    for f in (f for f in figures if f["figure"] == "photos_per_s"):
        rates[f["engine"]] = f["value"]
        rows.append(f"| {f['engine']} | {startup.get(f['engine'], '-')} | {f['value']} | {f['ratio_to_cli']} | "
                    f"{'yes' if f['labels_as_cli'] else 'NO'} ({f['rows']} rows) | {f['peak_mb']} |")
    photos = next(f["inputs"] for f in figures if f["figure"] == "photos_per_s")
    memory: dict[int, dict[str, Any]] = {}
    for f in (f for f in figures if f["figure"] == "peak_mb"):
        memory.setdefault(f["inputs"], {})["cli" if f["engine"] == "cli" else "ray"] = f["value"]
    rows += ["", "| inputs (96x96 crops, --no-detect) | CLI peak memory MB | Ray peak memory MB |", "|---:|---:|---:|"]
    rows += [f"| {n:,} | {m.get('cli', '-')} | {m.get('ray', '-')} |" for n, m in sorted(memory.items())]
    cores = data.get("cores", 2)
    best = max((e for e in rates if e != "cli"), key=rates.get, default=None)
    if best is not None:
        core_seconds = cores / rates[best]  # one photo's cost in core-seconds on this machine
        hours = ", ".join(f"{nodes} x {per} cores: {PROJECTION_IMAGES * core_seconds / (nodes * per) / 3600:,.1f} h"
                          for nodes, per in PROJECTION_NODES)
        rows.append(f"\nProjection for {PROJECTION_IMAGES:,} such photos from the best Ray row ({best}: "
                    f"{core_seconds * 1000:.0f} ms of one core per photo), assuming cores like these and linear "
                    f"scaling: {hours}.")
    rows.append(f"\n{photos:,} photos of 640x480 per throughput row. `{portable(data.get('command', '?'))}` at commit "
                f"{str(data.get('git_commit'))[:10]} on {data.get('hardware', '?')}.")
    return "\n".join(rows)


def _run_words(run: dict[str, Any]) -> str:
    """A model-card cell for one run record: its command, length, time and accuracy."""
    return (f"`{run.get('command', '?')}`: {run.get('epochs_done', '?')} epochs, {run.get('wall_s', 0) / 60:.0f} min, "
            f"val {_pct(run.get('val_acc'))} %, test {_pct(run.get('test_acc'))} %")


def _runs_behind(train: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """Every run record under ``train`` (the runs it started from and its teachers', recursively), each once
    (a run two teachers share counts once), and whether some teacher's training is not recorded."""
    seen, runs, unknown = set(), [], False
    stack = [train]
    while stack:
        run = stack.pop()
        key = (run.get("command"), run.get("git_commit"), run.get("wall_s"))
        if key in seen:
            continue
        seen.add(key)
        runs.append(run)
        teachers = (run.get("config") or {}).get("teacher") or []
        recorded = [t for t in run.get("teachers") or [] if isinstance(t, dict)]
        unknown |= len(teachers) > len([t for t in recorded if t.get("command")])
        stack += [t for t in recorded if t.get("command")]
        if isinstance(run.get("started_from"), dict):
            stack.append(run["started_from"])
    return runs, unknown


def _started_from(run: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The records of the runs ``run`` started from (``init=``), nearest first."""
    run = run.get("started_from")
    while run:
        yield run
        run = run.get("started_from")


def _lineage(train: dict[str, Any]) -> list[tuple[str, str]]:
    """Model-card rows for the runs a shipped model's run started from (``init=``), nearest first, then its
    teachers' runs (each with the runs it started from), then the training time of them all."""
    rows = [("started from", _run_words(run)) for run in _started_from(train)]
    for teacher in (t for t in train.get("teachers") or [] if isinstance(t, dict) and t.get("command")):
        words = "; started from ".join(_run_words(run) for run in (teacher, *_started_from(teacher)))
        if teacher.get("teachers"):
            words += "; its teachers: " + ", ".join(f"`{t.get('teacher', '?')}`" for t in teacher["teachers"])
        rows.append((f"teacher `{teacher.get('teacher', '?')}`", words))
    runs, unknown = _runs_behind(train)
    if len(runs) > 1 or unknown:
        total = sum(r.get("wall_s", 0.0) for r in runs)
        what = " and ".join(w for w, has in (("the runs it started from", train.get("started_from")),
                                             ("its teachers' runs", train.get("teachers") or unknown)) if has)
        rows.append((f"training time, with {what}",
                     f"{total / 60:.0f} min" + (" (some teacher models' own training not counted)" if unknown else "")))
    return rows


def reproduce_block(results: Path, budget: str = "cpu") -> str:
    """The paper's Tables 1 and 5 as ``ferkit reproduce`` made them under ``budget`` (``results/reproduce/``),
    with their curves, the softmax/island confusion pair and Fig. 4, as far as they exist; or a line saying
    they are not run yet."""
    from ferkit.paper.reproduce import (TABLES, confusion_markdown, features_markdown, load_records,
                                        table_markdown)

    results_dir = results / "reproduce"
    records = load_records(results_dir / budget)
    names = {row.name for key in ("table1", "table5") for row in TABLES[key].rows}
    if not any(r["reproduce"]["row"] in names for r in records):
        return (f"_Not run yet: no runs in results/reproduce/{budget}/. Make them with "
                f"`ferkit reproduce table1 --data PATH --budget {budget} --seeds 1`, then the same with table5._")
    folder = results_dir / budget
    # links are relative to the README, which sits beside the results folder (as in tools/report.py)
    prefix = f"results/reproduce/{budget}/"
    parts = []
    for key in ("table1", "table5"):
        parts.append(table_markdown(records, key, budget))
        if (folder / f"{key}_curves.png").is_file():
            parts.append(f"![{key} training curves]({prefix}{key}_curves.png)")
    confusion = confusion_markdown(records, budget, full=False)
    if confusion is not None:
        parts.append(confusion)
        if (folder / "confusion.png").is_file():
            parts.append(f"![confusion matrices, softmax and island]({prefix}confusion.png)\n\n"
                         f"The full matrices with counts: [{prefix}confusion.md]({prefix}confusion.md).")
    features = features_markdown(folder, budget, prefix)
    if features is not None:
        parts.append(features)
    return "\n\n".join(parts)


def registries_table(results_dir: Path) -> str:
    """Every registry's names with their one-line descriptions, read from the registries themselves, so a new
    attention layer, loss, detector or reader shows up here without an edit (``results_dir`` is not read)."""
    from ferkit.data import describe_formats
    from ferkit.data.augment import TTA_VIEW_COUNTS
    from ferkit.detect import describe_detectors
    from ferkit.losses.objective import describe_losses
    from ferkit.models.attention import ATTENTION_LAYERS
    from ferkit.models.registry import describe_models
    from ferkit.models.resnet import STEMS

    rows = ["| registry | name | what |", "|---|---|---|"]
    rows += [f"| model | `{name}` | {text} |" for name, text in describe_models().items()]
    rows += [f"| stem | `{name}` | {stem.kernel}x{stem.kernel} conv, stride {stem.stride}"
             f"{', then a 3x3 max-pool' if stem.max_pool else ''} |" for name, stem in STEMS.items()]
    rows += [f"| attention | `{name}` | {entry.summary} |" for name, entry in ATTENTION_LAYERS.items()]
    rows += [f"| loss | `{name}` | {text} |" for name, text in describe_losses().items()]
    rows += [f"| test-time views | `{name}` | {count} view{'s' if count > 1 else ''} per image |"
             for name, count in TTA_VIEW_COUNTS.items()]
    rows += [f"| detector | `{name}` | {text} |" for name, text in describe_detectors().items()]
    rows += [f"| data format | `{key}` | {fmt.description} |" for key, fmt in describe_formats().items()]
    return "\n".join(rows)


def train_throughput_table(results_dir: Path) -> str:
    """Markdown table of ``results/train_throughput.json``: each pipeline's speed, data share, FLOP/s, memory."""
    path = results_dir / "train_throughput.json"
    if not path.is_file():
        return f"_not measured yet: no {path.as_posix()}_"
    data = json.loads(path.read_text())
    lines, prov = data["lines"], data["provenance"]
    peaks = {f["dtype"]: f["tflop_s"] for f in lines if f["figure"] == "matmul_peak"}
    rows = ["| stem | pipeline | precision, memory format | img/s | data + augmentation share | TFLOP/s | "
            "% of matmul peak | peak RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    for f in lines:
        if f["figure"] == "step":
            s = f.get("settings", {})
            layout = "channels_last" if s.get("channels_last") else "contiguous"
            rows.append(f"| {f['stem']} | {f['pipeline']} | {s.get('precision', '?')}, {layout} | "
                        f"{f['img_per_s']:.1f} | {100 * f['data_share']:.2f} % | "
                        f"{f['achieved_tflop_s']:.3f} | {f['pct_of_matmul_peak']:.1f} % of {f['matmul_peak_dtype']} | "
                        f"{f['peak_rss_mib']:.0f} |")
    ratios = ", ".join(f"{f['stem']} stem {f['ratio']:.2f}x" for f in lines if f["figure"] == "speedup")
    rows.append(f"\nferkit (data and augmentation on the device) over a DataLoader pipeline "
                f"(fp32, per-image PIL transforms, 2 workers): {ratios}. Matmul peaks measured in the same run: "
                + ", ".join(f"{k} {v:.2f} TFLOP/s" for k, v in peaks.items())
                + f". `{prov.get('command', '?')}` at commit {str(prov.get('git_commit'))[:10]} on {prov.get('hardware', '?')}.")
    return "\n".join(rows)


def ship_check_table(results_dir: Path) -> str:
    """Candidates for the shipped model against it, face by face on both validation label sets, one
    ``results/ship_check*.json`` record (from ``benchmarks/ship_check.py``) per check, oldest first. The baseline
    is the model shipped under its name at the record's commit, which need not be the one shipped now."""
    records = sorted((json.loads(p.read_text()) for p in results_dir.glob("ship_check*.json")),
                     key=lambda r: r.get("date") or "")
    if not records:
        return f"_not measured yet: no {(results_dir / 'ship_check.json').as_posix()}_"
    sets = ("fer2013_val", "ferplus_val")
    rows = ["| candidate | baseline | " + " | ".join(f"{s}: accuracy % (baseline) | only it / only baseline right, p"
                                                  for s in sets)
            + " | qualifies |", "|---|---|" + "---:|---|" * len(sets) + "---|"]
    for data in records:
        commit = str(data.get("git_commit"))[:10]
        for f in data["figures"]:
            cells = [f"{_pct(f[s]['accuracy'])} ({_pct(f[s]['baseline_accuracy'])}) | "
                     f"{f[s]['only_candidate_right']} / {f[s]['only_baseline_right']}, "
                     + (f"{f[s]['p']:.4f}" if f[s]["p"] >= 1e-4 else "< 0.0001") for s in sets]
            rows.append(f"| {_model_label(f['model'])} | `{f['baseline']}` at {commit} | " + " | ".join(cells)
                        + f" | {'yes' if f['qualifies'] else 'no'} |")
    alphas = sorted({f["alpha"] for r in records for f in r["figures"]})
    rows.append(f"\nBaseline: the model shipped under that name at the check's commit; exact McNemar tests, alpha "
                f"{', '.join(map(str, alphas)) or '?'}. "
                + "; ".join(f"`{r.get('command', '?')}` at commit {str(r.get('git_commit'))[:10]}" for r in records)
                + f", on {records[-1].get('hardware', '?')}.")
    return "\n".join(rows)


BLOCKS: dict[str, Callable[[Path], str]] = {
    "registries": registries_table,
    "model-card": lambda results: model_card("default"),
    "fer2013-runs": lambda results: runs_table(results, "fer2013"),
    "ferplus-runs": lambda results: runs_table(results, "ferplus"),
    "aux-loss-runs": lambda results: runs_table(results, "aux_losses"),
    "recipe-checks": lambda results: runs_table(results, "recipe_checks"),
    "predict-compare": predict_compare_table,
    "api-accuracy": api_accuracy_table,
    "detector-recall": detector_table,
    "shift-suite": shift_suite_table,
    "ship-check": ship_check_table,
    "finetune-recipe": finetune_recipe_table,
    "serve-load": serve_load_table,
    "serve-vs-4c22aa5": lambda results: serve_load_table(results, "serve_load_vs_4c22aa5"),
    "scale": scale_table,
    "predict-speed": lambda results: json_lines_table(results, "predict_speed"),
    "train-throughput": train_throughput_table,
    "cpu-budget": cpu_budget_table,
    "reproduce-cpu": lambda results: reproduce_block(results, "cpu"),
}


MACHINE_PATHS = {"../shared/data/": "path/to/", "/tmp/cand/": "path/to/", "/work/fer-venv/": "path/to/fer-venv/",
                 "/tmp/fer2013_ferplus": "path/to/fer2013_ferplus", "/tmp/ferplus": "path/to/ferplus",
                 "/tmp/ft/": "path/to/"}
"""Paths of the machine the figures were measured on, and what a reader's copy of a command says instead."""


def portable(text: str) -> str:
    """``text`` with this machine's data and tool paths written as ``path/to/...``."""
    for local, shown in MACHINE_PATHS.items():
        text = text.replace(local, shown)
    return text


DOCS = ("README.md", "RESULTS.md")
"""The repository's documents with generated blocks, beside the results folder (their links are relative to it)."""


def update_readme(readme: str | Path, results_dir: str | Path) -> bool:
    """Regenerate every results block of ``readme``; returns whether the file changed."""
    readme, results_dir = Path(readme), Path(results_dir)
    if not readme.is_file():
        raise FerkitError(f"{readme}: no such file; run from the repository root or name the documents with --docs")
    text = readme.read_text()

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name not in BLOCKS:
            raise FerkitError(f"{readme}: unknown results block {name!r} (known: {', '.join(BLOCKS)})")
        return f"<!-- results:{name} -->\n{portable(BLOCKS[name](results_dir))}\n<!-- /results:{name} -->"

    new = re.sub(r"<!-- results:([\w-]+) -->.*?<!-- /results:\1 -->", fill, text, flags=re.S)
    if new != text:
        write_text(new, readme)
    return new != text


def main(argv: list[str] | None = None) -> int:
    """``record`` copies finished runs into ``results/<group>/``; ``readme`` regenerates the tables of ``--docs``."""
    parser = argparse.ArgumentParser(prog="tools/report.py", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("record", "readme"))
    parser.add_argument("runs", nargs="*", help="run folders to record")
    parser.add_argument("--group", default="fer2013", help="results/<group>/ for recorded runs")
    parser.add_argument("--results", default="results")
    parser.add_argument("--docs", nargs="+", default=list(DOCS), metavar="FILE",
                        help=f"documents whose results blocks to regenerate (default: {' '.join(DOCS)})")
    args = parser.parse_args(argv)
    try:
        if args.action == "record":
            for run in args.runs:
                print(f"wrote {record_run(run, args.results, args.group)}")
            return 0
        for picture in (plot_frontier(args.results), plot_serve_memory(args.results)):
            if picture is not None:
                print(f"wrote {picture}")
        for doc in args.docs:
            changed = update_readme(doc, args.results)
            print(f"{doc}: {'updated' if changed else 'already up to date'}")
    except FerkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
