"""Several models, or several training runs of each, on the same test cases: ``python -m vmunet_monai compare``.

Reads the per-case tables the bundles' evaluations write (``metrics_<split>_per_image.csv`` of the ISIC and
polyp bundles, ``per_case.csv`` of the Synapse bundle), pairs the cases by name and reports, for every model
against the first one:

- the mean and standard deviation over cases, and with several runs of a model (seeds) the mean and
  standard deviation of the runs' means;
- the mean paired difference with a bootstrap 95% interval, the two-sided Wilcoxon signed-rank p-value, and
  on how many cases the model is better, the same or worse.

A model with several runs is compared through each case's mean over its runs; runs with no case in common are
read as the folds of one cross-validation (out-of-fold evaluations), each case taken from the fold that held it
out. Test sets (the polyp bundle's
five) are reported together and one by one. Cases are matched by name: a case missing from a table is left out
of the pairing and counted; a case whose value is undefined (an HD95 of a missed organ, and the mean HD95 of a
case with any organ missed) is left out of that metric's pairing. A 2D table of several classes (one row per
image and class) is read as one row per image:
``dice`` and ``iou`` the mean over classes, ``dice_present`` / ``iou_present`` the mean over the classes present
in the image (its ground truth or its prediction), and ``dice_<class>`` / ``iou_<class>`` each class.

Where an evaluation wrote its calibration beside its table (``<prefix>_calibration.json``, ``calibration.json``
beside ``per_case.csv``), each model's ECE and Brier score are listed too, mean ± sd over its runs
(:func:`compare_calibration`); they are pooled over each run's own pixels, not paired.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vmunet_monai.evaluation.binary import mean_over_classes, mean_sd
from vmunet_monai.validation import InputError

__all__ = ["CaseTable", "Model", "join_folds", "locate_table", "read_table", "compare_models", "format_comparison",
           "plot_comparison", "run_calibration", "compare_calibration", "format_calibration", "run_compare",
           "size_differences"]

# what the evaluations write: the 2D bundles' BinarySegmentationReport and the Synapse OrganMetricsHandler
TABLE_PATTERNS = ("*_per_image.csv", "*per_case.csv")
PRANET_SUFFIX = "_pranet_per_image.csv"
ID_COLUMNS = {"image": ("name", "group"), "volume": ("case",)}
METRIC_ALIASES = {"hd95": "hd95_mm"}
BOOTSTRAP_SAMPLES = 10000


@dataclass
class CaseTable:
    """One evaluation's per-case table: ``values[case][column]`` (NaN where undefined) and each case's test set."""

    path: Path
    kind: str  # "image" (ISIC, polyp) or "volume" (Synapse)
    columns: list[str]
    values: dict[str, dict[str, float]]
    groups: dict[str, str]


@dataclass
class Model:
    """A label and one or more runs (tables) of that model.

    ``parts``: the tables of a cross-validation's folds, each on the cases its fold held out, when ``runs`` is the
    one table they make together (:func:`join_folds`); their means are the folds' means.
    """

    label: str
    runs: list[CaseTable] = field(default_factory=list)
    parts: list[CaseTable] = field(default_factory=list)


def join_folds(model: Model) -> Model:
    """``model`` itself, or, when it has several runs and no case is in two of them (the out-of-fold evaluations of
    a cross-validation, ``eval/fold0/oof,eval/fold1/oof,...``), one table of all their cases with the runs kept as
    its ``parts``, so each case counts once, from the fold that held it out, and the folds' means give the spread
    over folds.

    Raises:
        InputError: runs that share no case but are tables of different kinds or columns.
    """
    runs = model.runs
    if len(runs) < 2 or sum(len(r.values) for r in runs) != len(set().union(*(r.values for r in runs))):
        return model
    if len({r.kind for r in runs}) > 1 or any(r.columns != runs[0].columns for r in runs[1:]):
        raise InputError(f"{model.label}: the runs share no case (folds of a cross-validation?) but their tables "
                         f"differ in kind or columns: " + ", ".join(str(r.path) for r in runs))
    values, groups = {}, {}
    for r in runs:
        values.update(r.values)
        groups.update(r.groups)
    joined = CaseTable(path=runs[0].path, kind=runs[0].kind, columns=list(runs[0].columns), values=values,
                       groups=groups)
    return Model(model.label, [joined], list(runs))


def locate_table(path: str | os.PathLike) -> Path:
    """The per-case table at ``path``: the CSV itself, or the one table an evaluation wrote into that folder (the
    bundle's own where the PraNet-protocol table stands beside it; name ``metrics_<split>_pranet_per_image.csv`` to
    compare by that protocol, e.g. with ``--metric mean_dice``).

    Raises:
        FileNotFoundError: nothing at ``path``.
        InputError: a folder without a table, or with several (name the file then).
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder (give an evaluation's output folder or its "
                                f"per-case CSV)")
    found = sorted({p for pattern in TABLE_PATTERNS for p in path.glob(pattern)})
    # the PraNet-protocol table beside the bundle's own (polyp, native) is compared only when named
    found = [p for p in found if not p.name.endswith(PRANET_SUFFIX)] or found
    if not found:
        raise InputError(f"{path}: no per-case table here (the evaluation writes metrics_<split>_per_image.csv "
                         f"for ISIC and polyp, per_case.csv for Synapse); run evaluate.json first or name the CSV")
    if len(found) > 1:
        raise InputError(f"{path}: several per-case tables ({', '.join(p.name for p in found)}); name one of them")
    return found[0]


def _number(text: str, path: Path, line: int, column: str) -> float:
    if text.strip() in ("", "nan", "NaN"):
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{path} line {line}: column {column!r} holds {text!r}, not a number") from None


def read_table(path: str | os.PathLike) -> CaseTable:
    """Read a per-case table (a file, or a folder as :func:`locate_table` finds it).

    Raises:
        InputError: not a table an evaluation writes, a value that is not a number, or a case named twice.
    """
    path = locate_table(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    if {"name", "group"} <= set(header) and ("dice" in header or "mean_dice" in header):
        kind = "image"  # a 2D evaluation's table, or the PraNet-protocol one (mean_dice over thresholds)
    elif {"case", "mean_dice"} <= set(header):
        kind = "volume"
    else:
        raise InputError(f"{path}: not a per-case table of an evaluation (its header {header[:6]} has neither "
                         f"name, group and dice nor case and mean_dice)")
    ids = ID_COLUMNS[kind] + (("class",) if kind == "image" and "class" in header else ())
    ids += ("group",) if kind == "volume" and "group" in header else ()  # ACDC's ED and ES frames
    from vmunet_monai.evaluation.ct import VOLUME_KEYS

    # statuses and organ volumes describe a case; they are not scores to compare
    described = ("status_", *(f"{k}_" for k in VOLUME_KEYS))
    columns = [c for c in header if c not in ids and not c.startswith(described)]
    values, groups = {}, {}
    for line, row in enumerate(rows, start=2):
        case = f"{row['group']}/{row['name']}" if kind == "image" else row["case"]
        key = (case, row["class"]) if "class" in ids else case
        if key in values:
            raise InputError(f"{path} line {line}: case {case!r}" + (f" class {row['class']!r}" if "class" in ids
                                                                       else "") + " appears twice")
        values[key] = {c: _number(row[c], path, line, c) for c in columns}
        if kind == "volume" and "mean_hd95_mm" in values[key] and any(
                row[c] == "missed" for c in header if c.startswith("status_")):
            # the table's mean is over the organs found: a missed organ has no HD95, so the case has no mean to pair
            values[key]["mean_hd95_mm"] = math.nan
        groups[case] = row["group"] if "group" in ids and row["group"] else "all"
    if not values:
        raise InputError(f"{path}: the table has no cases")
    if "class" in ids:
        columns, values = _merge_classes(values, columns)
    return CaseTable(path, kind, columns, values, groups)


def _merge_classes(values: dict, columns: list[str]) -> tuple[list[str], dict]:
    """A table of several classes (one row per image and class) as one row per image: Dice and IoU the mean
    over classes (the per-image value of the evaluation's summary), counts summed, and each class's Dice and
    IoU in columns ``dice_<class>`` and ``iou_<class>`` (``--metric dice_<class>`` compares one class), and
    the mean over the classes present in each image as ``dice_present`` and ``iou_present``."""
    classes = list(dict.fromkeys(cls for _, cls in values))
    rows: dict[str, dict[str, dict]] = {}  # case -> class -> that class's row
    for (case, cls), row in values.items():
        rows.setdefault(case, {})[cls] = row
    out = {}
    for case, by_class in rows.items():
        merged = {c: mean_over_classes(list(by_class.values()), c) if c in ("dice", "iou")
                  else float(np.sum([r[c] for r in by_class.values()])) for c in columns}
        for m in ("dice", "iou"):
            merged[f"{m}_present"] = mean_over_classes(list(by_class.values()), m, present_only=True)
        for cls in classes:  # a class without a row for this image is undefined, not zero
            for m in ("dice", "iou"):
                merged[f"{m}_{cls}"] = by_class[cls][m] if cls in by_class else math.nan
        out[case] = merged
    return columns + ["dice_present", "iou_present"] + [f"{m}_{cls}" for cls in classes for m in ("dice", "iou")], out


def _metric_column(table: CaseTable, metric: str) -> str:
    name = METRIC_ALIASES.get(metric, metric)
    for candidate in (name, f"mean_{name}"):
        if candidate in table.columns:
            return candidate
    raise InputError(f"{table.path}: no column for --metric {metric!r}; choose from {', '.join(table.columns)}")


def lower_is_better(column: str) -> bool:
    """Distances (HD95, object Hausdorff), error counts and the PraNet protocol's MAE improve downwards; overlaps
    (Dice, IoU, F1) and the other PraNet measures upwards."""
    return "hd95" in column or "hausdorff" in column or column in ("fp", "fn", "mae")


def _case_means(model: Model, column: str, cases: Sequence[str]) -> dict[str, float]:
    """Each case's mean over the model's runs (NaN where every run leaves it undefined)."""
    out = {}
    for case in cases:
        vals = [run.values[case][column] for run in model.runs]
        vals = [v for v in vals if not math.isnan(v)]
        out[case] = float(np.mean(vals)) if vals else math.nan
    return out


def _paired(ref: dict[str, float], other: dict[str, float], lower: bool, seed: int) -> dict:
    """The paired statistics of ``other - ref`` over the cases both define."""
    from scipy.stats import wilcoxon

    cases = [c for c in ref if not math.isnan(ref[c]) and not math.isnan(other[c])]
    d = np.asarray([other[c] - ref[c] for c in cases], dtype=np.float64)
    result = {"n_paired": len(cases), "n_undefined": len(ref) - len(cases)}
    if d.size == 0:
        return {**result, "mean_diff": math.nan, "ci95": [math.nan, math.nan], "p_wilcoxon": math.nan,
                "better": 0, "same": 0, "worse": 0}
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, d.size, size=(BOOTSTRAP_SAMPLES, d.size))].mean(axis=1)
    if np.all(d == 0):
        p = 1.0
    else:
        p = float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    better = d < 0 if lower else d > 0
    return {**result, "mean_diff": float(d.mean()),
            "ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))], "p_wilcoxon": p,
            "better": int(np.count_nonzero(better & (d != 0))), "same": int(np.count_nonzero(d == 0)),
            "worse": int(np.count_nonzero(~better & (d != 0))),
            "differences": {c: float(v) for c, v in zip(cases, d)}}


def _summary(model: Model, column: str, cases: Sequence[str]) -> dict:
    per_case = _case_means(model, column, cases)
    mean, sd = mean_sd(per_case.values())
    runs = model.parts or model.runs
    run_means = [mean_sd(run.values[c][column] for c in cases if c in run.values)[0] for run in runs]
    runs_mean, runs_sd = mean_sd(run_means) if len(run_means) > 1 else (math.nan, math.nan)
    return {"label": model.label, "runs": [str(r.path) for r in runs], "folds": bool(model.parts),
            "n_cases": len(cases), "mean": mean, "sd": sd, "run_means": run_means, "runs_mean": runs_mean,
            "runs_sd": runs_sd, "per_case": per_case}


def compare_models(models: Sequence[Model], metric: str = "dice", seed: int = 0) -> dict:
    """Summaries and paired comparisons against ``models[0]``, over all cases and per test set.

    Raises:
        InputError: no model, tables of different kinds, a metric some table lacks, or no case common to all.
    """
    if not models or any(not m.runs for m in models):
        raise InputError("compare needs at least one evaluation table per model")
    models = [join_folds(m) for m in models]
    tables = [run for m in models for run in m.runs]
    kinds = {t.kind for t in tables}
    if len(kinds) > 1:
        raise InputError("the tables mix 2D per-image and Synapse per-case evaluations: "
                         + ", ".join(f"{t.path} ({t.kind})" for t in tables))
    columns = {_metric_column(t, metric) for t in tables}
    if len(columns) > 1:
        raise InputError(f"--metric {metric!r} names different columns in the tables: {sorted(columns)}")
    column = columns.pop()
    common = set(tables[0].values)
    for t in tables[1:]:
        common &= set(t.values)
    if not common:
        raise InputError("the tables have no case in common: " + ", ".join(str(t.path) for t in tables)
                         + " (were they evaluated on the same split?)")
    left_out = {str(t.path): sorted(set(t.values) - common) for t in tables if set(t.values) - common}
    groups_of = tables[0].groups
    group_names = sorted({groups_of[c] for c in common})
    lower = lower_is_better(column)

    def section(cases):
        cases = sorted(cases)
        summaries = [_summary(m, column, cases) for m in models]
        ref = summaries[0]["per_case"]
        pairs = [{"label": s["label"], **_paired(ref, s["per_case"], lower, seed)} for s in summaries[1:]]
        return {"n_cases": len(cases), "models": summaries, "against_first": pairs}

    result = {"metric": metric, "column": column, "lower_is_better": lower, "kind": tables[0].kind,
              "reference": models[0].label, "cases_left_out": left_out, "overall": section(common)}
    if len(group_names) > 1:
        result["groups"] = {g: section(c for c in common if groups_of[c] == g) for g in group_names}
    if tables[0].kind == "volume" and column.startswith("mean_"):
        prefix = column[len("mean_"):] + "_"
        organs = [c[len(prefix):] for c in tables[0].columns if c.startswith(prefix) and not c.startswith("mean_")]
        result["organs"] = {}
        for organ in organs:
            per_case = [_case_means(m, prefix + organ, sorted(common)) for m in models]
            pairs = [_paired(per_case[0], other, lower, seed) for other in per_case[1:]]
            result["organs"][organ] = {
                "means": {m.label: mean_sd(pc.values())[0] for m, pc in zip(models, per_case)},
                "against_first": [{"label": m.label, **{k: v for k, v in pair.items() if k != "differences"}}
                                  for m, pair in zip(models[1:], pairs)]}
    return result


def _fmt(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _fmt_p(p: float) -> str:
    """A p-value readably at any size: 0.0312, 4.9e-04."""
    if p is None or math.isnan(p):
        return "-"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.4f}"


def _format_section(section: dict, reference: str, lower: bool) -> list[str]:
    width = max(12, *(len(s["label"]) for s in section["models"])) + 2
    lines = [f"{'model':<{width}}{'runs':>5}{'cases':>7}   {'mean ± sd over cases':<22}{'mean ± sd of run means':<24}"]
    for s in section["models"]:
        runs = f"{_fmt(s['runs_mean'])} ± {_fmt(s['runs_sd'])}" if len(s["runs"]) > 1 else "-"
        runs += " (folds)" if s.get("folds") else ""
        lines.append(f"{s['label']:<{width}}{len(s['runs']):>5}{s['n_cases']:>7}   "
                     f"{_fmt(s['mean']) + ' ± ' + _fmt(s['sd']):<22}{runs:<24}")
    if section["against_first"]:
        lines.append(f"against {reference} (difference = model - {reference}; "
                     f"{'lower' if lower else 'higher'} is better):")
        lines.append(f"{'model':<{width}}{'paired':>7}{'mean diff':>11}   {'95% CI (bootstrap)':<22}"
                     f"{'Wilcoxon p':>11}   better/same/worse")
        for p in section["against_first"]:
            ci = f"[{_fmt(p['ci95'][0])}, {_fmt(p['ci95'][1])}]"
            lines.append(f"{p['label']:<{width}}{p['n_paired']:>7}{_fmt(p['mean_diff']):>11}   {ci:<22}"
                         f"{_fmt_p(p['p_wilcoxon']):>11}   {p['better']}/{p['same']}/{p['worse']}")
    return lines


def format_comparison(result: dict) -> str:
    """The printed report of a :func:`compare_models` result."""
    lower = result["lower_is_better"]
    lines = [f"metric {result['metric']} (column {result['column']}), {result['overall']['n_cases']} cases "
             f"paired by name; {'lower' if lower else 'higher'} is better"]
    for s in result["overall"]["models"]:
        if s.get("folds"):
            lines.append(f"{s['label']}: {len(s['runs'])} runs with no case in common, read as the folds of one "
                         f"cross-validation: each case from the fold that held it out; the spread is over folds")
    for path, cases in result["cases_left_out"].items():
        shown = ", ".join(cases[:5]) + (", ..." if len(cases) > 5 else "")
        lines.append(f"left out: {len(cases)} case(s) of {path} that another table lacks ({shown})")
    lines += _format_section(result["overall"], result["reference"], lower)
    what = "group" if result.get("kind") == "volume" else "test set"  # volumes: the datalist's groups (ACDC phases)
    for group, section in result.get("groups", {}).items():
        lines += ["", f"{what} {group}:"] + _format_section(section, result["reference"], lower)
    if result.get("organs"):
        labels = [s["label"] for s in result["overall"]["models"]]
        width = max(10, *(len(label) for label in labels)) + 2
        others = labels[1:]
        lines += ["", f"per organ, mean of {result['column'][len('mean_'):]} over cases"
                  + (f"; difference to {labels[0]} (Wilcoxon p)" if others else "") + ":",
                  f"{'organ':<14}" + "".join(f"{label:>{width}}" for label in labels)
                  + "".join(f"   {label + ' - ' + labels[0]:<24}" for label in others)]
        for organ, entry in result["organs"].items():
            diffs = "".join(f"   {_fmt(p['mean_diff']) + ' (' + _fmt_p(p['p_wilcoxon']) + ')':<24}"
                            for p in entry["against_first"])
            lines.append(f"{organ:<14}" + "".join(f"{_fmt(entry['means'][label]):>{width}}" for label in labels) + diffs)
    for p in result["overall"]["against_first"]:
        if p["n_undefined"]:
            lines.append(f"note: {p['n_undefined']} case(s) left out of the pairing of {p['label']}: the value is "
                         f"undefined there (e.g. HD95 of a missed organ)")
    return "\n".join(line.rstrip() for line in lines)


def plot_comparison(result: dict, path: str | os.PathLike) -> str:
    """Per-case values of each model (box plot with the cases as points), per model after the first its
    per-case differences to the first, sorted (green where it is better), and for Synapse each organ's mean
    per model."""
    from vmunet_monai.figures import pyplot, save

    plt = pyplot()

    overall = result["overall"]
    labels = [s["label"] for s in overall["models"]]
    pairs = overall["against_first"]
    organs = result.get("organs") or {}
    panels = 1 + len(pairs) + (1 if organs else 0)
    width = 4 + 4 * len(pairs) + 0.6 * len(labels) + (1.5 + 0.5 * len(organs) if organs else 0)
    fig, axes = plt.subplots(1, panels, figsize=(width, 4), squeeze=False)
    ax = axes[0][0]
    data = [[v for v in s["per_case"].values() if not math.isnan(v)] for s in overall["models"]]
    ax.boxplot(data, showfliers=False)
    jitter = np.random.default_rng(0)
    for i, values in enumerate(data, start=1):
        ax.plot(i + jitter.uniform(-0.12, 0.12, len(values)), values, "o", ms=3, alpha=0.5, color="tab:blue")
    ax.set_xticks(np.arange(1, len(labels) + 1), labels, rotation=15, ha="right")
    ax.set_title(f"{result['column']} per case")
    lower = result["lower_is_better"]
    for ax, p in zip(axes[0][1:], pairs):
        diffs = sorted(p.get("differences", {}).values())
        colors = ["tab:green" if (d < 0 if lower else d > 0) else ("tab:gray" if d == 0 else "tab:red") for d in diffs]
        ax.bar(np.arange(len(diffs)), diffs, color=colors)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks([])
        ax.set_xlabel("cases, sorted")
        ax.set_title(f"{p['label']} - {result['reference']}\nmean {_fmt(p['mean_diff'])}, "
                     f"Wilcoxon p {_fmt_p(p['p_wilcoxon'])}", fontsize=9)
    if organs:
        ax = axes[0][-1]
        x = np.arange(len(organs))
        step = 0.8 / len(labels)
        for i, label in enumerate(labels):
            ax.bar(x + (i - (len(labels) - 1) / 2) * step, [e["means"][label] for e in organs.values()], step,
                   label=label)
        ax.set_xticks(x, list(organs), rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{result['column'][len('mean_'):]} per organ (mean over cases)", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save(fig, path, dpi=100)


def _beside_table(table_path: str | os.PathLike, name: str) -> dict | None:
    """The JSON object an evaluation wrote beside its per-case table: ``<prefix>_<name>`` next to
    ``<prefix>_per_image.csv``, ``<name>`` next to ``per_case.csv``; None if there is none or it is not one."""
    path = Path(table_path)
    for suffix, joiner in (("_per_image.csv", "_"), ("per_case.csv", "")):
        if path.name.endswith(suffix):
            try:
                found = json.loads(path.with_name(path.name[: -len(suffix)] + joiner + name).read_text())
            except (OSError, ValueError):
                return None
            return found if isinstance(found, dict) else None
    return None


def run_environment(table_path: str | os.PathLike) -> dict | None:
    """The ``environment`` an evaluation recorded in the summary beside its per-case table (``<prefix>_summary.json``
    next to ``<prefix>_per_image.csv``, ``summary.json`` next to ``per_case.csv``); None if it has none."""
    environment = (_beside_table(table_path, "summary.json") or {}).get("environment")
    return environment if isinstance(environment, dict) else None


def run_calibration(table_path: str | os.PathLike) -> dict | None:
    """The calibration an evaluation wrote beside its per-case table (``<prefix>_calibration.json`` next to
    ``<prefix>_per_image.csv``, ``calibration.json`` next to ``per_case.csv``:
    :mod:`vmunet_monai.evaluation.calibration`); None if it wrote none."""
    calibration = _beside_table(table_path, "calibration.json")
    ok = calibration is not None and all(isinstance(calibration.get(k), (int, float)) for k in ("ece", "brier"))
    return calibration if ok else None


def compare_calibration(models: Sequence[Model]) -> dict[str, dict]:
    """Per model whose runs' evaluations wrote a calibration (:func:`run_calibration`): ``runs`` (how many of its
    runs did), the mean ``ece`` and ``brier`` over those runs and their standard deviations (0 for one run), the
    mean ``auroc`` with which its doubt finds its errors
    (:meth:`vmunet_monai.evaluation.calibration.Calibration.errors`; None where no run recorded one) and its
    ``auroc_sd``, and ``kind`` (foreground or top_label). Each run's numbers are pooled over all its own pixels,
    not only the cases paired with the other models. Empty when no run has one."""
    result = {}
    for model in models:
        found = [c for c in (run_calibration(t.path) for t in (model.parts or model.runs)) if c is not None]
        if found:
            ece, ece_sd = mean_sd(c["ece"] for c in found)
            brier, brier_sd = mean_sd(c["brier"] for c in found)
            kinds = sorted({str(c.get("kind", "foreground")) for c in found})
            aurocs = [e["auroc"] for e in (c.get("errors") for c in found)  # none in files written before
                      if isinstance(e, dict) and isinstance(e.get("auroc"), (int, float))]
            auroc, auroc_sd = mean_sd(aurocs) if aurocs else (None, None)
            result[model.label] = {"runs": len(found), "of_runs": len(model.parts or model.runs), "ece": ece,
                                   "ece_sd": ece_sd, "brier": brier, "brier_sd": brier_sd, "auroc": auroc,
                                   "auroc_sd": auroc_sd, "kind": "/".join(kinds)}
    return result


def format_calibration(calibration: dict[str, dict]) -> str:
    """The printed block of :func:`compare_calibration`; "" when there is nothing to show."""
    if not calibration:
        return ""
    width = max(12, *(len(label) for label in calibration)) + 2
    lines = ["calibration of the probabilities (each run over all its pixels; ECE and Brier score, lower is "
             "better; errors AUROC, how well the least sure pixels find the errors, higher is better; mean ± sd "
             "over runs):",
             f"{'model':<{width}}{'runs':>8}   {'ECE':<20}{'Brier':<20}{'errors AUROC':<20}kind"]
    for label, c in calibration.items():
        spread = c["runs"] > 1
        ece = _fmt(c["ece"]) + (f" ± {_fmt(c['ece_sd'])}" if spread else "")
        brier = _fmt(c["brier"]) + (f" ± {_fmt(c['brier_sd'])}" if spread else "")
        auroc = "-" if c.get("auroc") is None else _fmt(c["auroc"]) + (f" ± {_fmt(c['auroc_sd'])}" if spread else "")
        lines.append(f"{label:<{width}}{str(c['runs']) + '/' + str(c['of_runs']):>8}   {ece:<20}{brier:<20}"
                     f"{auroc:<20}{c['kind']}")
    return "\n".join(lines)


def environment_differences(models: Sequence[Model]) -> dict[str, dict[str, str]]:
    """The environment entries (:data:`vmunet_monai.doctor.ENVIRONMENT_KEYS`) in which the runs differ:
    entry -> {run: value}; runs whose evaluation recorded no environment are left out."""
    from vmunet_monai.doctor import ENVIRONMENT_KEYS

    recorded = {}
    for model in models:
        for i, table in enumerate(model.runs):
            environment = run_environment(table.path)
            if environment is not None:
                recorded[model.label if len(model.runs) == 1 else f"{model.label} run {i + 1}"] = environment
    return {key: {run: str(env.get(key)) for run, env in recorded.items()} for key in ENVIRONMENT_KEYS
            if len({str(env.get(key)) for env in recorded.values()}) > 1}


COUNT_COLUMNS = ("tp", "fp", "fn", "tn")


def size_differences(models: Sequence[Model]) -> dict:
    """Whether the 2D tables scored their common images at the same size: each image's pixels (its confusion counts
    summed) compared across the runs. The bundles' ``evaluate.json`` scores at the network's input size,
    ``evaluate_native.json`` and ``score`` at each image's own, and Dice differs between the two. Returns
    ``{"cases": how many images differ, "of": how many were compared, "case": the first, "pixels": {run: its
    pixels}}``, or ``{}`` where they agree or the tables hold no counts."""
    tables = {}
    for model in models:
        for i, table in enumerate(model.runs):
            if all(c in table.columns for c in COUNT_COLUMNS):
                tables[model.label if len(model.runs) == 1 else f"{model.label} run {i + 1}"] = table
    if len(tables) < 2:
        return {}
    common = sorted(set.intersection(*(set(t.values) for t in tables.values())), key=str)
    differ = [case for case in common
              if len({sum(t.values[case][c] for c in COUNT_COLUMNS) for t in tables.values()}) > 1]
    if not differ:
        return {}
    pixels = {label: int(sum(t.values[differ[0]][c] for c in COUNT_COLUMNS)) for label, t in tables.items()}
    return {"cases": len(differ), "of": len(common), "case": str(differ[0]), "pixels": pixels}


def _as_list(value) -> list[str]:
    """A comma-separated string, or the tuple fire makes of one, as a list of non-empty strings."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(i).strip() for i in items if str(i).strip()]


def _group_label(spec: Sequence[str]) -> str:
    """The default name of a model: its folder's (or table's) name; for several runs what their names share, as
    ``fold*`` for ``eval/fold0,eval/fold1`` (``fold*/oof`` for ``eval/fold0/oof,eval/fold1/oof``), else the first
    name and how many runs more."""
    names = [Path(p).name or str(p) for p in spec]
    if len(names) == 1:
        return names[0]
    if len(set(names)) == 1:  # eval/fold0/oof,eval/fold1/oof: what the folders above share
        parents = [Path(p).resolve().parent.name for p in spec]
        shared = os.path.commonprefix(parents).rstrip("_-. ")
        return f"{shared}*/{names[0]}" if shared and len(set(parents)) > 1 else f"{names[0]} ({len(names)} runs)"
    shared = os.path.commonprefix(names).rstrip("_-. ")
    return f"{shared}*" if shared else f"{names[0]}+{len(names) - 1}"


def run_compare(runs: Sequence, labels="", metric: str = "dice", out: str | None = None, seed: int = 0) -> dict:
    """Read, compare, print; with ``out`` also write ``compare.json`` and ``compare.png`` there.

    Args:
        runs: one entry per model: an evaluation folder or per-case CSV, or several joined by commas (runs of
            the same model, e.g. seeds).
        labels: the models' names, comma-separated (default: each folder's or file's name; for several runs of a
            model what their names share, e.g. ``fold*``).
        metric: a column of the tables: dice, iou (2D), dice, hd95, transunet_dice (Synapse, the mean over
            organs), or any other column such as dice_liver.
        out: folder for compare.json and compare.png.
        seed: seed of the bootstrap.

    Raises:
        InputError: no runs, a label count that does not match, or what :func:`compare_models` refuses.
    """
    specs = [_as_list(r) for r in runs]
    specs = [s for s in specs if s]
    if not specs:
        raise InputError("compare: give at least one evaluation folder or per-case CSV (several to compare models)")
    names = _as_list(labels) if labels else []
    if names and len(names) != len(specs):
        raise InputError(f"compare: {len(names)} label(s) ({', '.join(names)}) for {len(specs)} model(s)")
    if not names:
        names = [_group_label(s) for s in specs]
        if len(set(names)) < len(names):
            names = [s[0] for s in specs]
    if len(set(names)) < len(names):
        raise InputError(f"compare: the labels {names} repeat; give distinct ones with --labels")
    models = [Model(label, [read_table(p) for p in spec]) for label, spec in zip(names, specs)]
    result = compare_models(models, metric=metric, seed=seed)
    result["environment_differences"] = environment_differences(models)
    result["size_differences"] = size_differences(models)
    result["calibration"] = compare_calibration(models)
    print(format_comparison(result))
    if result["calibration"]:
        print("\n" + format_calibration(result["calibration"]))
    if result["environment_differences"]:
        listed = "; ".join(f"{key}: " + ", ".join(f"{run} {value}" for run, value in runs.items())
                           for key, runs in result["environment_differences"].items())
        print(f"note: the runs were evaluated in different environments ({listed}); a difference between them "
              f"may come from there as well as from the models")
    if result["size_differences"]:
        sizes = result["size_differences"]
        listed = ", ".join(f"{run} {count:,}" for run, count in sizes["pixels"].items())
        print(f"note: {sizes['cases']} of {sizes['of']} images were scored at different sizes (first: {sizes['case']}, "
              f"pixels: {listed}); evaluate.json scores at the network's input size, evaluate_native.json and score "
              f"at each image's own, and Dice differs between the two: compare tables of one kind (eval/native/ "
              f"beside score's)")
    if out:
        from vmunet_monai.evaluation.ct import _nan_to_none  # JSON has no NaN

        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "compare.json").write_text(json.dumps(_nan_to_none(result), indent=2) + "\n")
        result["plot"] = plot_comparison(result, out_dir / "compare.png")
        print(f"written: {out_dir / 'compare.json'}, {result['plot']}")
    return result

