"""What ``predict`` measures in the volumes it segments: each class's volume per case and, for cine cardiac MRI
in ACDC's patient folders, each patient's clinical indices from the prediction alone.

- ``OUTPUT/volumes.csv``: one line per segmented volume, each class's volume in ml (voxels times the voxel volume
  of the volume's own grid).
- ``OUTPUT/clinical_indices.csv`` (ACDC): one line per patient whose end-diastolic and end-systolic frames
  (``Info.cfg``) were both segmented: LV and RV end-diastolic and end-systolic volumes, ejection fractions and
  the myocardial mass at end-diastole, as :mod:`vmunet_monai.evaluation.cardiac` computes them against a ground
  truth in the evaluation. Classes are read as LV, RV and MYO by their names, or by ACDC's label values
  (RV 1, MYO 2, LV 3) when the network has four classes and its names say nothing of the heart.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["write_volumes"]


def _voxel_volumes(path: str) -> tuple[np.ndarray, float]:
    """Each label value's volume in ml (index = value) in a written label map, and its voxel volume in ml."""
    import nibabel as nib

    from vmunet_monai.evaluation.ct import spacing_from_affine

    image = nib.load(path)
    voxel_ml = float(np.prod(spacing_from_affine(image.affine))) / 1000.0
    return np.bincount(np.asarray(image.dataobj).astype(np.int64).ravel()) * voxel_ml, voxel_ml


def _named(volumes: np.ndarray, classes: Mapping[int, str]) -> dict[str, float]:
    return {name: float(volumes[value]) if value < volumes.size else 0.0 for value, name in classes.items()}


def _cardiac_names(classes: Mapping[int, str]) -> dict[int, str]:
    from vmunet_monai.data.volumes import ACDC_CLASSES
    from vmunet_monai.evaluation.cardiac import find_structures

    if find_structures(list(classes.values())):
        return dict(classes)
    if sorted(classes) == sorted(ACDC_CLASSES):  # four classes named otherwise: ACDC's label values
        return dict(ACDC_CLASSES)
    return {}


def write_volumes(sources: Sequence[str], segmentations: Sequence[str], classes: Mapping[int, str],
                  output: str | os.PathLike) -> dict:
    """Write ``volumes.csv`` and, for ACDC's patient folders, ``clinical_indices.csv`` into ``output``.

    Args:
        sources: the segmented volumes (files; DICOM series folders), in the order of ``segmentations``.
        segmentations: the written label maps.
        classes: label value -> class name, background left out.
        output: the prediction's output folder.

    Returns:
        ``{"volumes": path, "clinical": path or None, "patients": n}``.
    """
    from vmunet_monai.data.volumes import acdc_phases
    from vmunet_monai.evaluation.cardiac import find_structures, frame_indices, write_patient_csv
    from vmunet_monai.evaluation.ct import _case_name

    output = Path(output)
    rows, frames = [], {}
    cardiac = _cardiac_names(classes)
    for source, seg in zip(sources, segmentations):
        volumes, voxel_ml = _voxel_volumes(seg)
        case = _case_name(source)
        rows.append({"case": case, "segmentation": Path(seg).name, "voxel_ml": voxel_ml, **_named(volumes, classes)})
        phase = acdc_phases(Path(source).parent).get(case) if cardiac else None
        if phase:
            frames.setdefault(Path(source).parent.name, {})[phase] = (case, _named(volumes, cardiac))
    path = output / "volumes.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        # column names without spaces ("left kidney" as left_kidney_ml), as per_case.csv and compare name classes
        writer.writerow(["case", "segmentation", "voxel_ml"]
                        + [f"{'_'.join(str(name).split())}_ml" for name in classes.values()])
        for r in rows:
            writer.writerow([r["case"], r["segmentation"], f"{r['voxel_ml']:.6g}"]
                            + [round(r[name], 3) for name in classes.values()])
    result = {"volumes": str(path), "clinical": None, "patients": 0}
    patients = {p: f for p, f in sorted(frames.items()) if set(f) == {"ED", "ES"}}
    if not patients:
        return result
    structures = find_structures(list(cardiac.values()))
    table = []
    for patient, pair in patients.items():
        (ed_case, ed), (es_case, es) = pair["ED"], pair["ES"]
        table.append((patient, ed_case, es_case, frame_indices(ed, es, structures)))
    names = list(table[0][3])
    clinical = output / "clinical_indices.csv"
    write_patient_csv(clinical, names, [(p, ed, es, [values[n] for n in names]) for p, ed, es, values in table])
    shown = [n for n in ("LV_EDV", "LV_EF", "RV_EF", "MYO_mass") if n in names]
    print(f"clinical indices of {len(table)} patient(s) from the predictions ({clinical}):")
    for patient, _, _, values in table:
        print("  " + patient + ": " + ", ".join(f"{n} {values[n]:.1f}" for n in shown))
    result.update(clinical=str(clinical), patients=len(table))
    return result
