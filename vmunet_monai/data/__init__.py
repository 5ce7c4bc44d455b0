"""Dataset importers (the layouts datasets are distributed in) and synthetic demo datasets.

Each bundle has one module here with ``prepare(raw, out, **options)`` and ``demo_data(out, num, seed, **options)``;
:mod:`vmunet_monai.data.folders` reads your own binary 2D data (folders of images and masks) for the 2D bundles,
:mod:`vmunet_monai.data.volumes` your own CT volumes and classes for the Synapse bundle.
"""

from __future__ import annotations

import importlib
import inspect

__all__ = ["DATASET_MODULES", "prepare", "demo_data", "options_of"]

DATASET_MODULES = {
    "isic_skin_lesion": "vmunet_monai.data.isic",
    "polyp_seg": "vmunet_monai.data.polyp",
    "synapse_multiorgan": "vmunet_monai.data.synapse",
}


def _module(bundle: str):
    if bundle not in DATASET_MODULES:
        raise SystemExit(f"error: unknown bundle {bundle!r}: choose one of {', '.join(DATASET_MODULES)}")
    return importlib.import_module(DATASET_MODULES[bundle])


def options_of(bundle: str, command: str) -> dict:
    """The keyword options (name -> default) of ``command`` (``prepare`` or ``demo_data``) for ``bundle``."""
    sig = inspect.signature(getattr(_module(bundle), command))
    skip = {"raw", "out"}
    return {name: p.default for name, p in sig.parameters.items()
            if name not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _check_options(bundle: str, command: str, options: dict):
    known = options_of(bundle, command)
    unknown = [k for k in options if k not in known]
    if unknown:
        from vmunet_monai.validation import InputError

        listed = ", ".join(f"--{k}" for k in known)
        raise InputError(f"{command} {bundle}: unknown option{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join('--' + k for k in unknown)} (options of {bundle}: {listed})")


def prepare(bundle: str, raw: str, out: str, **options):
    """Write ``out/datalist.json`` for ``bundle`` from the raw dataset ``raw`` (a folder, an archive, or a folder of
    archives: :mod:`vmunet_monai.data.archives`); ``options`` are those of the bundle's importer
    (:func:`options_of`), an unknown one is an ``InputError``."""
    from vmunet_monai.data.archives import archives_left, unpack_dataset
    from vmunet_monai.data.common import DatasetLayoutError, record_archives

    module = _module(bundle)
    _check_options(bundle, "prepare", options)
    folder, archives = unpack_dataset(raw, out)
    try:
        path = module.prepare(folder, out, **options)
    except DatasetLayoutError as exc:
        left = archives_left(raw, out)
        if not left:
            raise
        raise DatasetLayoutError(f"{exc}\n  note: {raw} also holds {len(left)} archive(s) left packed ("
                                 f"{', '.join(p.name for p in left[:4])}{', ...' if len(left) > 4 else ''}): prepare "
                                 "unpacks archives only where RAW holds no folder; extract them beside the folders, "
                                 "or give RAW the archives alone") from None
    if archives:
        record_archives(out, archives)
    return path


def demo_data(bundle: str, out: str, num: int | None = None, seed: int = 0, **options):
    """Write a synthetic dataset for ``bundle`` in its raw layout under ``out``; ``options`` are those of the
    bundle's generator (ISIC: ``year``; Synapse: ``shape``, ``spacing``), an unknown one is an ``InputError``."""
    module = _module(bundle)
    _check_options(bundle, "demo_data", options)
    kwargs = {"seed": seed, **options}
    if num is not None:
        kwargs["num"] = num
    return module.demo_data(out, **kwargs)
