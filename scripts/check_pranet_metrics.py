"""Compare ``vmunet_monai.evaluation.pranet`` with PySODMetrics on random probability maps, image by image.

PySODMetrics is an independent Python port of the MATLAB toolbox the PraNet lineage evaluates with; it is not a
dependency of this project. Install it in a separate environment (it pulls OpenCV, scikit-image and scikit-learn)
and give this script that environment's interpreter. Prints, per measure, the largest difference over the maps
and, for S-alpha, whether each difference falls on a centroid exactly between two pixels (where the two round
differently: PySODMetrics half to even, the toolbox half up).

Usage::

    python -m venv /tmp/sod && /tmp/sod/bin/pip install pysodmetrics numpy scipy
    python scripts/check_pranet_metrics.py --sod-python /tmp/sod/bin/python [--maps 12] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ORACLE = r"""
import json, sys
import numpy as np
import py_sod_metrics as M
cases = json.load(open(sys.argv[1]))
for c in cases:
    pred, gt = np.asarray(c["pred"], np.uint8), np.asarray(c["gt"], np.uint8)
    s, w, e, m = M.Smeasure(), M.WeightedFmeasure(), M.Emeasure(), M.MAE()
    for metric in (s, w, e, m):
        metric.step(pred, gt)
    c.update(s_alpha=float(s.get_results()["sm"]), weighted_f=float(w.get_results()["wfm"]),
             e_max=float(np.max(e.get_results()["em"]["curve"])), mae=float(m.get_results()["mae"]))
json.dump(cases, open(sys.argv[1], "w"))
"""


def _maps(count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    cases = []
    for k in range(count):
        h, w = (int(v) for v in rng.integers(20, 90, 2))
        gt = np.zeros((h, w), np.uint8)
        r0, c0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        gt[r0:r0 + int(rng.integers(3, h // 2)), c0:c0 + int(rng.integers(3, w // 2))] = 255
        pred = np.clip(rng.random((h, w)) * 0.6 + (gt > 0) * 0.5 * rng.random(), 0, 1) * 255
        cases.append({"pred": pred.astype(np.uint8).tolist(), "gt": gt.tolist()})
    return cases


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sod-python", required=True, help="an interpreter with pysodmetrics installed")
    p.add_argument("--maps", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    from vmunet_monai.evaluation import pranet

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cases.json"
        path.write_text(json.dumps(_maps(args.maps, args.seed)))
        subprocess.run([args.sod_python, "-c", ORACLE, str(path)], check=True)
        cases = json.loads(path.read_text())
    worst = {k: 0.0 for k in ("s_alpha", "weighted_f", "e_max", "mae")}
    ties = []
    for k, case in enumerate(cases):
        gt = np.asarray(case["gt"], np.uint8)
        ours = pranet.image_scores(str(k), np.asarray(case["pred"], np.uint8), gt)
        for key in worst:
            if np.isnan(ours[key]):
                continue  # an empty ground truth: no weighted F-beta here (PySODMetrics gives 0)
            worst[key] = max(worst[key], abs(ours[key] - case[key]))
        if abs(ours["s_alpha"] - case["s_alpha"]) > 1e-9:
            centroid = np.argwhere(gt > 127).mean(axis=0)
            ties.append(bool(np.any(np.isclose(centroid % 1, 0.5))))
    print(f"{len(cases)} maps; largest difference from PySODMetrics:")
    for key, value in worst.items():
        print(f"  {key:<10} {value:.3g}")
    print(f"S-alpha differs on {len(ties)} map(s), {sum(ties)} of them with the centroid between two pixels")


if __name__ == "__main__":
    main()
