"""Dataset importers (the layouts datasets are distributed in) and synthetic demo datasets.

Each bundle has one module here with ``prepare(raw, out, **options)`` and ``demo_data(out, num, seed)``.
"""

from __future__ import annotations

import importlib

__all__ = ["DATASET_MODULES", "prepare", "demo_data"]

DATASET_MODULES = {
    "isic_skin_lesion": "vmunet_monai.data.isic",
    "polyp_seg": "vmunet_monai.data.polyp",
    "synapse_multiorgan": "vmunet_monai.data.synapse",
}


def _module(bundle: str):
    if bundle not in DATASET_MODULES:
        raise SystemExit(f"unknown bundle {bundle!r}: choose one of {', '.join(DATASET_MODULES)}")
    return importlib.import_module(DATASET_MODULES[bundle])


def prepare(bundle: str, raw: str, out: str, **options):
    """Write ``out/datalist.json`` for ``bundle`` from the raw dataset folder ``raw``."""
    return _module(bundle).prepare(raw, out, **options)


def demo_data(bundle: str, out: str, num: int | None = None, seed: int = 0):
    """Write a synthetic dataset for ``bundle`` in its raw layout under ``out``."""
    kwargs = {"seed": seed}
    if num is not None:
        kwargs["num"] = num
    return _module(bundle).demo_data(out, **kwargs)
