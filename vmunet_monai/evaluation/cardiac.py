"""Clinical indices of cine cardiac MRI (ACDC) from segmentations, as the ACDC challenge reports them.

A patient's end-diastolic (ED) and end-systolic (ES) frames, each segmented into right ventricle (RV),
myocardium (MYO) and left-ventricular cavity (LV), give:

* ``LV_EDV``, ``LV_ESV``, ``RV_EDV``, ``RV_ESV``: cavity volumes in ml (voxels times the voxel volume);
* ``LV_EF``, ``RV_EF``: ejection fractions in %, ``100 * (EDV - ESV) / EDV``;
* ``MYO_mass``: myocardial mass in g at end-diastole, its volume times 1.05 g/ml.

Each index is computed from the prediction and from the ground truth. Over patients, the agreement is
summarised as ACDC does: the correlation of predicted with true values, the bias (mean of predicted minus
true) and the standard deviation of those differences (the limits of agreement are bias ± 1.96 sd), beside
the mean absolute error. :func:`write_clinical` writes the per-patient table, a scatter and a Bland-Altman
plot per index, and returns the summary that the Synapse evaluation adds to ``summary.json``.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["INDICES", "MYOCARDIUM_DENSITY", "STRUCTURES", "clinical_indices", "find_structures", "frame_indices",
           "summarize_indices", "write_clinical", "write_patient_csv"]

MYOCARDIUM_DENSITY = 1.05  # g/ml
# names a class may have, lower case, for each structure
STRUCTURES = {
    "LV": ("lv", "lv cavity", "left ventricle", "left_ventricle", "left ventricular cavity"),
    "RV": ("rv", "rv cavity", "right ventricle", "right_ventricle", "right ventricular cavity"),
    "MYO": ("myo", "myocardium", "lv myocardium", "left ventricular myocardium"),
}
INDICES = {  # index -> (unit, what it is)
    "LV_EDV": ("ml", "left-ventricular end-diastolic volume"),
    "LV_ESV": ("ml", "left-ventricular end-systolic volume"),
    "LV_EF": ("%", "left-ventricular ejection fraction"),
    "RV_EDV": ("ml", "right-ventricular end-diastolic volume"),
    "RV_ESV": ("ml", "right-ventricular end-systolic volume"),
    "RV_EF": ("%", "right-ventricular ejection fraction"),
    "MYO_mass": ("g", "myocardial mass at end-diastole"),
}
PLOTTED = ("LV_EF", "RV_EF", "LV_EDV", "RV_EDV", "MYO_mass")


def find_structures(organs: Sequence[str]) -> dict[str, str]:
    """Structure (LV, RV, MYO) -> the organ name that holds it, for the names found."""
    found = {}
    for organ in organs:
        for structure, names in STRUCTURES.items():
            if organ.strip().lower() in names:
                found.setdefault(structure, organ)
    return found


def _ef(edv: float, esv: float) -> float:
    return 100.0 * (edv - esv) / edv if edv > 0 else math.nan


def frame_indices(ed: Mapping[str, float], es: Mapping[str, float], structures: Mapping[str, str]) -> dict[str, float]:
    """One patient's indices from the class volumes (ml, by class name) of its ED and ES frames."""
    out = {}
    for side in ("LV", "RV"):
        if side in structures:
            edv, esv = ed[structures[side]], es[structures[side]]
            out.update({f"{side}_EDV": edv, f"{side}_ESV": esv, f"{side}_EF": _ef(edv, esv)})
    if "MYO" in structures:
        out["MYO_mass"] = ed[structures["MYO"]] * MYOCARDIUM_DENSITY
    return out


def clinical_indices(rows: Sequence[dict], groups: Mapping[str, str], patients: Mapping[str, str]) -> list[dict]:
    """One entry per patient with an ED and an ES case: ``{"patient", "ed_case", "es_case", "truth": {index: v},
    "pred": {index: v}}``.

    Args:
        rows: :func:`vmunet_monai.evaluation.ct.case_scores` results with ``case``, ``volume_ml`` and
            ``truth_volume_ml``.
        groups: case -> ``ED`` or ``ES`` (the datalist's ``group``).
        patients: case -> patient (the datalist's ``patient``).

    Returns:
        An empty list when the classes name none of LV, RV and MYO, or no patient has both phases.
    """
    if not rows:
        return []
    structures = find_structures(list(rows[0]["dice"]))
    if not structures:
        return []
    frames: dict[str, dict[str, dict]] = {}
    for row in rows:
        phase, patient = groups.get(row["case"]), patients.get(row["case"])
        if phase in ("ED", "ES") and patient:
            frames.setdefault(patient, {})[phase] = row
    out = []
    for patient, pair in sorted(frames.items()):
        if set(pair) != {"ED", "ES"}:
            continue
        ed, es = pair["ED"], pair["ES"]
        out.append({"patient": patient, "ed_case": ed["case"], "es_case": es["case"],
                    "truth": frame_indices(ed["truth_volume_ml"], es["truth_volume_ml"], structures),
                    "pred": frame_indices(ed["volume_ml"], es["volume_ml"], structures)})
    return out


def _agreement(truth: np.ndarray, pred: np.ndarray) -> dict:
    keep = ~(np.isnan(truth) | np.isnan(pred))
    truth, pred = truth[keep], pred[keep]
    n = int(truth.size)
    diff = pred - truth
    if n >= 3 and truth.std() > 0 and pred.std() > 0:
        r = float(np.corrcoef(truth, pred)[0, 1])
    else:
        r = math.nan  # too few patients, or no spread to correlate
    sd = float(diff.std(ddof=1)) if n >= 2 else math.nan
    return {"n": n, "truth_mean": float(truth.mean()) if n else math.nan,
            "pred_mean": float(pred.mean()) if n else math.nan, "correlation": r,
            "bias": float(diff.mean()) if n else math.nan, "sd_difference": sd,
            "mae": float(np.abs(diff).mean()) if n else math.nan}


def summarize_indices(patients: Sequence[dict]) -> dict:
    """Per index: ``n``, the true and predicted means, Pearson's ``correlation``, ``bias`` (predicted minus true),
    ``sd_difference`` and ``mae``, with its ``unit``."""
    summary = {}
    for index, (unit, what) in INDICES.items():
        if patients and index in patients[0]["truth"]:
            truth = np.asarray([p["truth"][index] for p in patients], dtype=np.float64)
            pred = np.asarray([p["pred"][index] for p in patients], dtype=np.float64)
            summary[index] = {"unit": unit, "description": what, **_agreement(truth, pred)}
    return summary


def format_indices(summary: Mapping[str, dict]) -> list[str]:
    """One line per index: correlation, bias ± sd, mean absolute error."""
    lines = []
    for index, s in summary.items():
        lines.append(f"{index} ({s['unit']}): {s['n']} patients, true {s['truth_mean']:.1f}, predicted "
                     f"{s['pred_mean']:.1f}, correlation {s['correlation']:.3f}, bias {s['bias']:+.2f} ± "
                     f"{s['sd_difference']:.2f}, mean absolute error {s['mae']:.2f}")
    return lines


def _plot(patients: Sequence[dict], summary: Mapping[str, dict], path: str) -> str:
    """Per index: predicted against true values with the identity line (top), and Bland-Altman (bottom)."""
    from vmunet_monai.figures import pyplot, save

    plt = pyplot()

    shown = [i for i in PLOTTED if i in summary]
    fig, axes = plt.subplots(2, len(shown), figsize=(3.4 * len(shown), 6.6), squeeze=False)
    for col, index in enumerate(shown):
        s = summary[index]
        truth = np.asarray([p["truth"][index] for p in patients], dtype=np.float64)
        pred = np.asarray([p["pred"][index] for p in patients], dtype=np.float64)
        top, bottom = axes[0, col], axes[1, col]
        top.scatter(truth, pred, s=18, color="tab:blue")
        finite = np.concatenate([truth, pred])
        finite = finite[~np.isnan(finite)]
        if finite.size:
            low, high = float(finite.min()), float(finite.max())
            pad = 0.05 * (high - low or 1.0)
            top.plot([low - pad, high + pad], [low - pad, high + pad], color="grey", lw=1, ls="--")
        top.set_title(f"{index} ({s['unit']})\nr = {s['correlation']:.3f}", fontsize=10)
        top.set_xlabel("ground truth")
        top.set_ylabel("prediction")
        mean, diff = (truth + pred) / 2, pred - truth
        bottom.scatter(mean, diff, s=18, color="tab:orange")
        bottom.axhline(s["bias"], color="black", lw=1)
        if not math.isnan(s["sd_difference"]):
            for sign in (-1, 1):
                bottom.axhline(s["bias"] + sign * 1.96 * s["sd_difference"], color="grey", lw=1, ls="--")
        bottom.set_title(f"bias {s['bias']:+.2f} ± {s['sd_difference']:.2f}", fontsize=10)
        bottom.set_xlabel("mean of both")
        bottom.set_ylabel("prediction - truth")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    fig.suptitle(f"Clinical indices, {len(patients)} patients (top: agreement; bottom: Bland-Altman, "
                 f"bias ± 1.96 sd)", fontsize=11)
    fig.tight_layout()
    return save(fig, path, dpi=110)


def write_patient_csv(path: str | os.PathLike, columns: Sequence[str],
                      rows: Iterable[tuple[str, str, str, Sequence[float]]]) -> None:
    """One line per patient: ``patient``, ``ed_case``, ``es_case``, then the values of ``columns`` to three decimals
    (undefined ones left empty)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["patient", "ed_case", "es_case", *columns])
        for patient, ed_case, es_case, values in rows:
            writer.writerow([patient, ed_case, es_case, *("" if math.isnan(v) else round(v, 3) for v in values)])


def write_clinical(rows: Sequence[dict], groups: Mapping[str, str], patients: Mapping[str, str], output_dir: str,
                   prefix: str = "") -> dict | None:
    """Compute the clinical indices of every patient with both phases; write ``clinical_indices.csv`` (one line
    per patient, true and predicted values) and ``clinical_indices.png``.

    Returns:
        ``{"num_patients", "indices": summary, "paths"}``, or None where the classes or the datalist give no
        patient with an ED and an ES frame.
    """
    found = clinical_indices(rows, groups, patients)
    if not found:
        return None
    summary = summarize_indices(found)
    names = list(summary)
    csv_path = os.path.join(output_dir, f"{prefix}clinical_indices.csv")
    os.makedirs(output_dir, exist_ok=True)
    sides = [(side, i) for i in names for side in ("truth", "pred")]
    write_patient_csv(csv_path, [f"{side}_{i}" for side, i in sides],
                      [(p["patient"], p["ed_case"], p["es_case"], [p[side][i] for side, i in sides]) for p in found])
    plot_path = _plot(found, summary, os.path.join(output_dir, f"{prefix}clinical_indices.png"))
    return {"num_patients": len(found), "myocardium_density_g_per_ml": MYOCARDIUM_DENSITY, "indices": summary,
            "paths": {"csv": csv_path, "plot": plot_path}}
