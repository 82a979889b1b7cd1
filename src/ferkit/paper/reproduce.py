"""Rerun the paper's Tables 1, 2 and 5 under a stated budget and set our numbers beside the paper's.

Every (row, seed) trains into ``<out>/<budget>/<row>_seed<k>/``; a rerun of the same command skips the
finished runs and resumes the interrupted one. After each run its figures are recorded under
``<results>/<budget>/`` and the tables (``<table>.md``), their curves and the confusion matrices of the
paper's Tables 3 and 4 are rewritten from the recorded JSON files alone, so no figure is typed by hand.
For Table 5 the feature space of the best run of each loss (the paper's Fig. 4) is drawn last.
"""
from __future__ import annotations

import json
import shlex
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ferkit.engine.curves import plot_curves
from ferkit.config import TrainConfig, config_to_dict, load_config
from ferkit.data import FERDataset
from ferkit.engine.metrics import ClassificationReport
from ferkit.engine.runtime import git_commit, hardware, resolve_device
from ferkit.engine.train import load_training_data, train
from ferkit.errors import FerkitError
from ferkit.fileio import PLOTS_EXTRA, can_draw, new_figure, save_figure, write_json, write_text
from ferkit.paper.records import record_run

BUDGETS: dict[str, dict[str, Any]] = {
    # Tables 1 + 5 (5 distinct runs, one seed) in about 2 hours on a 2-core CPU. The 7x7 stride-2 stem with
    # max-pool trains at ~150-200 img/s with CBAM in bf16, so one FER2013 epoch with validation takes
    # ~2.5-3 min; 8 epochs make ~25 min a run.
    "cpu": {"stem": "imagenet", "epochs": 8},
    # The configs as shipped: 3x3 stride-1 stem, 200 epochs, batch 128, the paper's protocol. A GPU job.
    "full": {},
}

# Config keys that say where a run ran, not what it trained: a rerun may change them.
_MACHINE_KEYS = ("device", "threads", "eval_batch_size", "compile")


@dataclass(frozen=True)
class Row:
    """One row of a paper table: its label, the run that reproduces it and the paper's accuracy (%)."""

    label: str                                    # as the paper prints it
    short: str                                    # in the claim sentences
    config: str                                   # shipped config name
    overrides: tuple[tuple[str, Any], ...] = ()   # on top of the config and the budget
    paper: float | None = None                    # the paper's accuracy in %; None where it prints none

    @property
    def name(self) -> str:
        """The run's name; rows with the same config and overrides are the same runs, in every table."""
        return self.config + "".join(f"_{key}{value}" for key, value in self.overrides)


@dataclass(frozen=True)
class Table:
    """A paper table: its rows and the comparisons the paper's text draws from them."""

    title: str
    paper_column: str                             # which of the paper's columns ``Row.paper`` holds
    rows: tuple[Row, ...]
    claims: tuple[tuple[str, str], ...] = ()      # (better, worse) row names, as the paper claims
    best: str | None = None                       # the row the paper claims beats every other one
    notes: tuple[str, ...] = ()


_SOFTMAX, _ISLAND = "r18_cbam", "r18_cbam_island"
# Its Table 2 (CK+): the weight lambda of the island term. It prints no lambda 0.2; we run it too.
_PAPER_LAMBDA = {0.1: 86.47, 0.2: None, 0.3: 87.02, 0.4: 88.13, 0.5: 89.24, 0.6: 88.67, 0.7: 87.42, 0.8: 87.21,
                 0.9: 86.79}
_SHIPPED_LAMBDA = 0.5  # r18_cbam_island.yaml's lam: that row is Table 5's island runs

TABLES: dict[str, Table] = {
    "table1": Table(
        "Table 1: attention in every residual block", "FER2013",
        (Row("Res18", "Res18", "r18", paper=68.46),
         Row("Res18+channel(SE)", "+SE", "r18_se", paper=69.94),
         Row("Res18+spacial+channel(CBAM)", "+CBAM", _SOFTMAX, paper=71.25)),
        claims=(("r18_se", "r18"), (_SOFTMAX, "r18"), (_SOFTMAX, "r18_se"))),
    "table5": Table(
        "Table 5: loss functions", "FER2013",
        (Row("Res18+CBAM+L_S (softmax)", "softmax", _SOFTMAX, paper=71.82),
         Row("Res18+CBAM+L_C (center, lambda 0.5)", "center", "r18_cbam_center", paper=72.79),
         Row("Res18+CBAM+L (island, lambda 0.5)", "island", _ISLAND, paper=73.65)),
        claims=(("r18_cbam_center", _SOFTMAX), (_ISLAND, "r18_cbam_center"), (_ISLAND, _SOFTMAX)),
        notes=("The paper's Table 5 also prints a row Res18+CBAM at 71.25 (its Table 1 figure) above "
               "Res18+CBAM+L_S at 71.82; both read as the softmax model, so the softmax row here is the "
               "same runs as Table 1's CBAM row.",)),
    "table2": Table(
        "Table 2: weight lambda of the island loss (the paper's numbers are CK+ accuracy, ours are on the "
        "data given)", "CK+",
        tuple(Row(f"lambda {lam}", f"lambda {lam}", _ISLAND,
                  () if lam == _SHIPPED_LAMBDA else (("lam", lam),), paper)
              for lam, paper in _PAPER_LAMBDA.items()),
        best=_ISLAND,
        notes=("The paper's numbers are CK+ accuracy; ours are on the data given, so compare the shape of "
               "the sweep, not the level. The paper prints no lambda 0.2. Its lambda 0.5 row is the same "
               "runs as Table 5's island row.",)),
}
TABLE_ORDER = ("table1", "table5", "table2")

# The diagonals of its Tables 3 (softmax) and 4 (island): per-class FER2013 test accuracy in %.
_PAPER_DIAGONAL = {
    "softmax": {"angry": 64.35, "disgust": 73.12, "fear": 50.33, "happy": 91.13, "sad": 59.35, "surprise": 85.14,
                "neutral": 69.12},
    "island": {"angry": 66.57, "disgust": 75.23, "fear": 52.38, "happy": 92.41, "sad": 60.87, "surprise": 86.52,
               "neutral": 71.24},
}


def tables_of(table: str) -> list[str]:
    """The table keys ``table`` stands for (``all`` = every one)."""
    if table == "all":
        return list(TABLE_ORDER)
    if table not in TABLES:
        raise FerkitError(f"unknown table {table!r}; choose one of {', '.join(TABLE_ORDER)} or all")
    return [table]


def plan(tables: Sequence[str], seeds: int) -> list[tuple[Row, int]]:
    """Every (row, seed) the tables need, each distinct run once; all rows of seed 0 come first."""
    rows: dict[str, Row] = {}
    for key in tables:
        for row in TABLES[key].rows:
            rows.setdefault(row.name, row)
    return [(row, seed) for seed in range(seeds) for row in rows.values()]


def row_config(row: Row, budget: str, seed: int) -> TrainConfig:
    """The training config of ``row`` under ``budget`` with ``seed``."""
    if budget not in BUDGETS:
        raise FerkitError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    return load_config(row.config, {**BUDGETS[budget], **dict(row.overrides), "seed": seed})


def budget_note(budget: str) -> str:
    """What ``budget`` trains, in words, and what that means for its numbers."""
    changes = BUDGETS.get(budget)
    if changes is None:
        return f"budget `{budget}` (unknown to this version of ferkit)"
    if not changes:
        return f"budget `{budget}`: the configs as shipped (3x3 stem, 200 epochs, as the paper trains)"
    shown = " ".join(f"{key}={value}" for key, value in changes.items())
    return (f"budget `{budget}`: the shipped configs with {shown}, far short of the paper's 200 epochs, so "
            "expect lower accuracy than the paper's and compare the rows with each other")


def _command(table: str, data: str, budget: str, seeds: int, out: str, results: str) -> str:
    return shlex.join(["ferkit", "reproduce", table, "--data", data, "--budget", budget, "--seeds", str(seeds),
                       "--out", out, "--results", results])


# -- tables from recorded runs -----------------------------------------------------------------------

@dataclass
class _Stats:
    """The recorded runs of one row."""

    runs: list[dict[str, Any]]

    @property
    def tests(self) -> list[float]:
        return [100 * r["test_acc"] for r in self.runs if r.get("test_acc") is not None]

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.tests) if self.tests else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1) over seeds, in points; None below two seeds."""
        return statistics.stdev(self.tests) if len(self.tests) > 1 else None


def _of_budget(records: list[dict[str, Any]], budget: str) -> list[dict[str, Any]]:
    return [r for r in records if r["reproduce"].get("budget", budget) == budget]


def _by_row(records: list[dict[str, Any]]) -> dict[str, _Stats]:
    rows: dict[str, _Stats] = {}
    for r in sorted(records, key=lambda r: r.get("seed", 0)):
        rows.setdefault(r["reproduce"]["row"], _Stats([])).runs.append(r)
    return rows


def _cell(row: Row, stats: _Stats | None) -> str:
    paper = "-" if row.paper is None else f"{row.paper:.2f}"
    label = f"{row.label} (`{row.name}`)"
    if stats is None or not stats.runs:
        return f"| {label} | {paper} | not run yet | - | 0 | - | - |"
    runs = stats.runs
    ours = "no test split" if stats.mean is None else (
        f"{stats.mean:.2f} +/- " + ("n/a" if stats.std is None else f"{stats.std:.2f}"))
    val = statistics.fmean(100 * r["val_acc"] for r in runs)
    done = "/".join(str(e) for e in sorted({r["epochs_done"] for r in runs}))
    best = ", ".join(str(r["best_epoch"]) for r in runs)
    minutes = statistics.fmean(r["wall_s"] for r in runs) / 60
    return f"| {label} | {paper} | {ours} | {val:.2f} | {len(runs)} | {done} (best {best}) | {minutes:.1f} |"


def _spread(a: _Stats, b: _Stats, difference: float) -> str:
    n = min(len(a.tests), len(b.tests))
    if n < 2:
        return "the seed spread is unknown (1 seed), so this difference cannot be told from seed noise"
    spread = max(a.std or 0.0, b.std or 0.0)
    verdict = "exceeds" if abs(difference) > spread else "does not exceed"
    return f"the seed spread is {spread:.2f} ({n} seeds): the difference {verdict} it"


def _claim(better: Row, worse: Row, stats: dict[str, _Stats]) -> str:
    head = f"{better.short} vs {worse.short}"
    a, b = stats.get(better.name), stats.get(worse.name)
    paper = (f"paper {better.paper - worse.paper:+.2f}" if better.paper is not None and worse.paper is not None
             else "paper -")
    if a is None or b is None or a.mean is None or b.mean is None:
        return f"- {head}: {paper}; ours not run yet."
    difference = a.mean - b.mean
    return f"- {head}: ours {difference:+.2f} points, {paper}; {_spread(a, b, difference)}."


def _best_claim(table: Table, stats: dict[str, _Stats]) -> str:
    """The paper's 'this row beats every other' claim, checked on test and on validation accuracy."""
    claimed = next(row for row in table.rows if row.name == table.best)
    others = [row for row in table.rows if row is not claimed]
    paper_rival = max((row for row in others if row.paper is not None), key=lambda row: row.paper or 0.0)
    paper = f"paper {(claimed.paper or 0.0) - (paper_rival.paper or 0.0):+.2f} vs {paper_rival.short}"
    head = f"{claimed.short} vs the best other row"
    means = {name: s.mean for name, s in stats.items() if s.mean is not None}
    ran = [row for row in others if row.name in means]
    if not ran or claimed.name not in means:
        return f"- {head}: {paper}; ours not run yet."
    rival = max(ran, key=lambda row: means[row.name])
    difference = means[claimed.name] - means[rival.name]
    by_val = max((row for row in table.rows if row.name in stats),
                 key=lambda row: statistics.fmean(r["val_acc"] for r in stats[row.name].runs))
    return (f"- {head} (ours: {rival.short}): ours {difference:+.2f} points, {paper}; "
            f"{_spread(stats[claimed.name], stats[rival.name], difference)}. By validation accuracy ours "
            f"would pick {by_val.short} (the paper picked on its test data).")


def table_markdown(records: list[dict[str, Any]], table: str, budget: str) -> str:
    """Markdown of paper ``table`` (``table1``/``table2``/``table5``) from recorded run JSONs of ``budget``.

    A row's figure is the mean +/- sample std over seeds of the test accuracy (FER2013: PrivateTest) of
    the epoch with the best validation accuracy (FER2013: PublicTest). After the table, one computed
    sentence per comparison the paper draws, set against the spread over seeds, and the command that
    makes the table.
    """
    spec = TABLES[table]
    records = _of_budget(records, budget)
    stats = _by_row(records)
    mine = [r for row in spec.rows for r in stats.get(row.name, _Stats([])).runs]
    data = sorted({Path(r["reproduce"]["data"]).name for r in mine})
    hardware = sorted({r["hardware"] for r in mine if r.get("hardware")})
    where = (f" Data: {', '.join(data)}." if data else "") + (f" Trained on {'; '.join(hardware)}." if hardware else "")
    lines = [f"**{spec.title}**, {budget_note(budget)}.{where}",
             "",
             "Ours: test-split accuracy (FER2013: PrivateTest) of the epoch with the best validation accuracy "
             "(FER2013: PublicTest), mean +/- sample std over seeds; minutes are per run.",
             "",
             f"| row | paper % ({spec.paper_column}) | ours % (mean +/- std) | val % | seeds | epochs | minutes |",
             "|---|---:|---:|---:|---:|---|---:|"]
    lines += [_cell(row, stats.get(row.name)) for row in spec.rows]
    rows = {row.name: row for row in spec.rows}
    claims = [_claim(rows[a], rows[b], stats) for a, b in spec.claims]
    if spec.best:
        claims.append(_best_claim(spec, stats))
    lines += ["", *claims, *(["", *spec.notes] if spec.notes else [])]
    if mine:
        first = mine[0]["reproduce"]
        seeds = max(len(stats[name].runs) for name in rows if name in stats)
        command = _command(table, first["data"], budget, seeds, first["out"], first["results"])
    else:
        command = _command(table, "PATH", budget, 1, "runs/reproduce", "results/reproduce")
    lines += ["", f"Reproduce: `{command}`"]
    return "\n".join(lines)


def load_records(folder: str | Path) -> list[dict[str, Any]]:
    """The run JSONs ``reproduce`` recorded in ``folder`` (one budget's results folder)."""
    folder = Path(folder)
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    return [r for r in records if isinstance(r, dict) and "reproduce" in r]


def best_by_val(records: list[dict[str, Any]], row: str) -> dict[str, Any] | None:
    """The recorded run of ``row`` with the best validation accuracy that has a test report, if any."""
    runs = [r for r in records if r["reproduce"]["row"] == row and r.get("test_report")]
    return max(runs, key=lambda r: r["val_acc"], default=None)


def _pair(records: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], ClassificationReport]] | None:
    """(kind, record, test report) of the best softmax and the best island run; None until both exist."""
    softmax, island = best_by_val(records, _SOFTMAX), best_by_val(records, _ISLAND)
    if softmax is None or island is None:
        return None
    return [(kind, r, ClassificationReport.from_dict(r["test_report"]))
            for kind, r in (("softmax", softmax), ("island", island))]


def _pick_line(kind: str, record: dict[str, Any], records: list[dict[str, Any]]) -> str:
    row = record["reproduce"]["row"]
    n = sum(r["reproduce"]["row"] == row for r in records)
    return (f"{kind} (`{row}`): seed {record['seed']}, the best validation accuracy "
            f"({100 * record['val_acc']:.2f} %) of {n} seed(s); test accuracy {100 * record['test_acc']:.2f} %")


def confusion_markdown(records: list[dict[str, Any]], budget: str, full: bool = True) -> str | None:
    """The paper's Tables 3 and 4 from ours: the test confusion matrices (%) of the best softmax and the
    best island run by validation accuracy, side by side with the paper's per-class accuracy (the
    matrices' diagonals); ``full=False`` leaves out the full matrices. None until both rows have a
    recorded run."""
    records = _of_budget(records, budget)
    pair = _pair(records)
    if pair is None:
        return None
    (_, soft_rec, soft), (_, isl_rec, isl) = pair
    lines = [f"**Tables 3 and 4: test confusion, softmax vs island loss**, {budget_note(budget)}.", "",
             "Picked by validation accuracy, never by test accuracy:", "",
             f"- (a) {_pick_line('softmax', soft_rec, records)}",
             f"- (b) {_pick_line('island', isl_rec, records)}", "",
             "Per-class accuracy (%), the diagonals; paper = its Tables 3 and 4:", "",
             "| class | paper (a) softmax | ours (a) softmax | paper (b) island | ours (b) island |",
             "|---|---:|---:|---:|---:|"]
    for name in soft.classes:
        cells = []
        for kind, report in (("softmax", soft), ("island", isl)):
            paper = _PAPER_DIAGONAL[kind].get(name)
            ours = report.per_class_accuracy.get(name)
            cells += ["-" if paper is None else f"{paper:.2f}", "-" if ours is None else f"{100 * ours:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if not full:
        return "\n".join(lines)
    lines += ["", soft.to_markdown(f"(a) softmax, `{soft_rec['reproduce']['row']}` seed {soft_rec['seed']}"),
              isl.to_markdown(f"(b) island, `{isl_rec['reproduce']['row']}` seed {isl_rec['seed']}")]
    return "\n".join(lines)


def save_confusion_pair(records: list[dict[str, Any]], path: str | Path) -> Path | None:
    """One PNG with the two heat maps of :func:`confusion_markdown`; None until both runs exist."""
    pair = _pair(records)
    if pair is None:
        return None
    k = len(pair[0][2].classes)
    side = max(4.0, 0.9 * k + 2.0)
    fig = new_figure(figsize=(2 * side + 1.0, side), layout="constrained")
    for ax, (letter, (kind, record, report)) in zip(fig.subplots(1, 2), zip("ab", pair)):
        percent = report.confusion_percent()
        image = ax.imshow(percent, cmap="Blues", vmin=0.0, vmax=100.0)
        ax.set_xticks(range(k), labels=report.classes, rotation=45, ha="right")
        ax.set_yticks(range(k), labels=report.classes)
        ax.set(xlabel="predicted", ylabel="true",
               title=f"({letter}) {kind}: {record['reproduce']['row']} seed {record['seed']}, "
                     f"test {100 * report.accuracy:.2f}%")
        for i, row in enumerate(percent):
            for j, value in enumerate(row):
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=8,
                        color="white" if value > 50.0 else "black")
    fig.colorbar(image, ax=fig.axes, label="% of true class")
    return save_figure(fig, path)


FEATURES = "features"  # the subfolder of ``<results>/<budget>/`` that holds the paper's Fig. 4


def _feature_picks(records: list[dict[str, Any]], out: Path) -> list[tuple[Row, dict[str, Any], Path]]:
    """(row, record, checkpoint) of the best run by validation accuracy of each Table 5 row."""
    picks = []
    for row in TABLES["table5"].rows:
        record = best_by_val(records, row.name)
        if record is not None:
            picks.append((row, record, out / f"{row.name}_seed{record['seed']}" / "best.pt"))
    return picks


def feature_figures(budget: str, data: str | Path, results: str | Path, out: str | Path, *,
                    log: Callable[[str], None] = print, progress: bool = True) -> Path | None:
    """The paper's Fig. 4 from ours: the test-split feature space of the best softmax, center and island
    run (by validation accuracy), side by side in ``features/fig4.png``, with each run's feature
    statistics in ``features/<row>_seed<k>.json``. Drawn again only when a pick or its checkpoint changed
    since the last drawing; kept as they are when the checkpoints are gone. Returns the PNG, or None."""
    from ferkit.data import load_dataset
    from ferkit.analysis import features as feats

    folder = Path(results) / budget
    picks = _feature_picks(_of_budget(load_records(folder), budget), Path(out) / budget)
    if not picks:
        return None
    target = folder / FEATURES
    png = target / "fig4.png"
    jsons = [target / f"{row.name}_seed{record['seed']}.json" for row, record, _ in picks]
    stale = {p.name for p in target.glob("*.json")} - {j.name for j in jsons} if target.is_dir() else set()
    if png.is_file() and not stale and all(j.is_file() for j in jsons) and all(
            not ckpt.is_file() or ckpt.stat().st_mtime <= png.stat().st_mtime for _, _, ckpt in picks):
        return png  # drawn from these picks, and no checkpoint changed since
    missing = [str(ckpt) for _, _, ckpt in picks if not ckpt.is_file()]
    if missing:
        log(f"feature pictures not redrawn: no checkpoint {', '.join(missing)}")
        return png if png.is_file() else None
    test = load_dataset(data, splits=("test",), progress=progress)["test"]
    panels = []
    for (row, record, ckpt), path in zip(picks, jsons):
        start = time.perf_counter()
        info = feats.embed_features(ckpt, test)
        points, labels = info.pop("points"), info.pop("labels")
        info.update(row=row.name, loss_label=row.short, seed=record["seed"], val_acc=record["val_acc"],
                    test_acc=record["test_acc"], budget=budget, training_command=record.get("command"),
                    git_commit=git_commit(), hardware=hardware(), wall_s=time.perf_counter() - start)
        write_json(info, path)
        panels.append((points, labels, feats.feature_title(info, f"({row.short}) {row.name} seed {record['seed']}")))
        log(f"features of {row.name} seed {record['seed']}: intra/inter "
            f"{info['stats']['intra_inter_ratio']:.3f}, centred center cosine "
            f"{info['stats']['center_cosine_centred']:.3f}")
    for name in stale:
        (target / name).unlink()
    return feats.plot_feature_panels(panels, info["classes"], png)


def features_markdown(folder: str | Path, budget: str, image_prefix: str = "") -> str | None:
    """The figures behind the Fig. 4 picture, one row per loss, from ``<folder>/features/*.json``; None if none."""
    infos = {}
    for path in sorted((Path(folder) / FEATURES).glob("*.json")):
        info = json.loads(path.read_text())
        if isinstance(info, dict) and "row" in info and "stats" in info:
            infos[info["row"]] = info
    rows = [(row, infos[row.name]) for row in TABLES["table5"].rows if row.name in infos]
    if not rows:
        return None
    method = rows[0][1]["method"].upper()
    intro = (f"**Fig. 4: the feature space**, {budget_note(budget)}. The 512-d pooled features of "
             f"{rows[0][1]['n']} {rows[0][1]['split']}-split images (the same images for every run), projected "
             f"by {method}; the figures are computed in the full 512-d space. Lower intra/inter = tighter "
             "classes further apart (what center loss aims at); a lower centred center cosine = class means "
             "that point more different ways (what island loss aims at).")
    header = ("| loss (run) | seed | test % | intra/inter distance | center cosine | centred center cosine "
              "| learned-center cosine |")
    lines = [intro, "", header, "|---|---:|---:|---:|---:|---:|---:|"]
    for row, info in rows:
        st = info["stats"]
        learned = st.get("learned_center_cosine")
        lines.append(f"| {row.short} (`{row.name}`) | {info['seed']} | {100 * info['test_acc']:.2f} | "
                     f"{st['intra_inter_ratio']:.3f} | {st['center_cosine']:.3f} | "
                     f"{st['center_cosine_centred']:.3f} | {'-' if learned is None else f'{learned:.3f}'} |")
    if (Path(folder) / FEATURES / "fig4.png").is_file():
        lines += ["", f"![feature space by loss]({image_prefix}{FEATURES}/fig4.png)"]
    return "\n".join(lines)


# -- running -----------------------------------------------------------------------------------------

def _check_config(run_dir: Path, saved: dict[str, Any], cfg: TrainConfig) -> None:
    """Refuse to reuse a run folder that trained another config than the one asked for now."""
    wanted = config_to_dict(cfg)
    changed = [key for key in saved if key in wanted and key not in _MACHINE_KEYS and saved[key] != wanted[key]]
    if changed:
        shown = ", ".join(f"{key} {saved[key]!r} (now {wanted[key]!r})" for key in changed)
        raise FerkitError(f"{run_dir}: holds a run of another config: {shown}; "
                          "delete that folder or choose another --out")


def _record(run_dir: Path, results: Path, budget: str, row: Row, seed: int, origin: dict[str, str]) -> Path:
    """Record a finished run as ``<results>/<budget>/<row>_seed<k>.json`` with its row and test report."""
    path = record_run(run_dir, results, budget, f"{row.name}_seed{seed}")
    record = json.loads(path.read_text())
    record["reproduce"] = {"row": row.name, "budget": budget, **origin}
    report = run_dir / "test_report.json"
    if report.is_file():
        record["test_report"] = json.loads(report.read_text())["report"]
    return write_json(record, path)


def write_outputs(tables: Sequence[str], budget: str, results: str | Path, out: str | Path) -> list[Path]:
    """Rewrite ``<table>.md`` and ``<table>_curves.png`` of ``tables`` and ``confusion.md``/``.png`` from
    the records in ``<results>/<budget>/`` and the run folders in ``<out>/<budget>/``."""
    folder, runs = Path(results) / budget, Path(out) / budget
    records = load_records(folder)
    written = []
    for key in tables:
        names = {row.name for row in TABLES[key].rows}
        run_dirs = sorted(runs / f"{r['reproduce']['row']}_seed{r['seed']}" for r in records
                          if r["reproduce"]["row"] in names)
        run_dirs = [d for d in run_dirs if (d / "metrics.jsonl").is_file()]
        text = table_markdown(records, key, budget)
        if run_dirs:
            curves = plot_curves(run_dirs, folder / f"{key}_curves.png", f"{TABLES[key].title} ({budget})")
            text += f"\n\n![training curves]({curves.name})"
        written.append(write_text(text + "\n", folder / f"{key}.md"))
    confusion = confusion_markdown(records, budget)
    if confusion is not None:
        save_confusion_pair(records, folder / "confusion.png")
        written.append(write_text(confusion + "\n![confusion matrices](confusion.png)\n", folder / "confusion.md"))
    return written


def reproduce(table: str, data: str | Path, budget: str, seeds: int, out: str | Path = "runs/reproduce",
              results: str | Path = "results/reproduce", *, log: Callable[[str], None] = print,
              progress: bool = True) -> list[Path]:
    """Train (or finish, or skip) every run of ``table`` for seeds 0..``seeds``-1 under ``budget``; after
    each run, record it and rewrite the tables. Returns the Markdown files written."""
    tables = tables_of(table)
    if not can_draw():  # said before hours of training, not after the first run
        raise FerkitError(f"ferkit reproduce draws its curves and confusion matrices with matplotlib: {PLOTS_EXTRA}")
    if budget not in BUDGETS:
        raise FerkitError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    if seeds < 1:
        raise FerkitError(f"--seeds {seeds}: give at least one seed")
    runs = plan(tables, seeds)
    root = Path(out) / budget
    origin = {"data": str(data), "out": str(out), "results": str(results)}
    command = _command(table, str(data), budget, seeds, str(out), str(results))
    recorded = {(r.name, s): Path(results) / budget / f"{r.name}_seed{s}.json" for r, s in runs}
    state = ["finished" if (root / f"{r.name}_seed{s}" / "final.json").is_file() else
             "to resume" if (root / f"{r.name}_seed{s}" / "last.pt").is_file() else
             "recorded" if recorded[r.name, s].is_file() else "to start" for r, s in runs]
    log(f"{len(runs)} runs in {root}: " + ", ".join(f"{state.count(k)} {k}" for k in ("finished", "to resume",
                                                                                        "to start"))
        + (f", {state.count('recorded')} recorded in {results} only" if "recorded" in state else ""))
    log(f"{budget_note(budget)}; rerun `{command}` to continue after a stop")
    first = row_config(runs[0][0], budget, 0)
    if first.epochs >= 100 and resolve_device(first.device).type == "cpu":
        log(f"note: {first.epochs} epochs a run on the CPU takes days; this budget is meant for a GPU")
    splits: dict[str, FERDataset] | None = None
    written: list[Path] | None = None  # the outputs, while they are up to date
    for index, (row, seed) in enumerate(runs, start=1):
        run_dir = root / f"{row.name}_seed{seed}"
        cfg = row_config(row, budget, seed)
        name = f"[{index}/{len(runs)}] {row.name} seed {seed}"
        if (run_dir / "final.json").is_file():
            _check_config(run_dir, json.loads((run_dir / "final.json").read_text())["config"], cfg)
            log(f"{name}: finished before, skipped")
            _record(run_dir, Path(results), budget, row, seed, origin)
            written = None
            continue
        resume = (run_dir / "last.pt").is_file()
        if not resume and recorded[row.name, seed].is_file():
            # The run folder is gone (another machine, a clean checkout) but its figures were kept.
            record = recorded[row.name, seed]
            _check_config(record, json.loads(record.read_text())["config"], cfg)
            log(f"{name}: recorded in {record} before, skipped")
            continue
        if resume:
            _check_config(run_dir, config_to_dict(load_config(run_dir / "config.yaml")), cfg)
        if splits is None:
            # One read of the data serves every run; a carved validation split uses seed 0 for all of them.
            splits = load_training_data(first, data, log, progress)
        if not resume:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # a stale log whose checkpoint is gone
            write_text(str(Path(data).resolve()) + "\n", run_dir / "data_path.txt")
            write_text(command + "\n", run_dir / "command.txt")
        log(f"{name}: {'resuming' if resume else 'training'} in {run_dir}")
        train(cfg, splits, run_dir, resume=resume, log=log, progress=progress)
        _record(run_dir, Path(results), budget, row, seed, origin)
        written = write_outputs(tables, budget, results, out)
    written = written if written is not None else write_outputs(tables, budget, results, out)
    if "table5" in tables and feature_figures(budget, data, results, out, log=log, progress=progress):
        text = features_markdown(Path(results) / budget, budget)
        if text is not None:
            written.append(write_text(text + "\n", Path(results) / budget / "features.md"))
    return written
