"""Dataset importers (the layouts datasets are distributed in) and synthetic demo datasets.

Each bundle has one module here with ``prepare(raw, out, **options)`` and ``demo_data(out, num, seed, **options)``;
:mod:`vmunet_monai.data.folders` reads your own binary 2D data (folders of images and masks) for the 2D bundles,
:mod:`vmunet_monai.data.volumes` your own CT volumes and classes for the Synapse bundle.
"""

from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path

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


def _check_options(bundle: str, command: str, options: dict) -> dict:
    """``options`` with on/off values as booleans, or an ``InputError`` naming an option ``bundle``'s ``command`` does
    not have, or a value of the wrong kind for its default (an on/off option takes true/false, yes/no, on/off or
    1/0; a whole-number option a whole number; a number a number, and a ``*_fraction`` one from 0 up to below 1)."""
    from vmunet_monai.validation import InputError, read_flag

    known = options_of(bundle, command)
    unknown = [k for k in options if k not in known]
    if unknown:
        import difflib

        listed = ", ".join(f"--{k}" for k in known)
        close = difflib.get_close_matches(unknown[0], list(known), n=1)
        hint = f"; did you mean --{close[0]}?" if len(unknown) == 1 and close else ""  # as predict's options
        raise InputError(f"{command} {bundle}: unknown option{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join('--' + k for k in unknown)}{hint} (options of {bundle}: {listed})")
    checked = dict(options)
    for name, value in options.items():
        default = known[name]
        if isinstance(default, bool):
            checked[name] = read_flag(f"{command} {bundle} --{name}", value)
        elif isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int)):
            raise InputError(f"{command} {bundle} --{name} {value!r}: must be a whole number")
        elif isinstance(default, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise InputError(f"{command} {bundle} --{name} {value!r}: must be a number")
        elif name.endswith("_fraction") and not 0 <= value < 1:
            raise InputError(f"{command} {bundle} --{name} {value!r}: a share of the cases, at least 0 and below 1")
    return checked


def prepare(bundle: str, raw: str, out: str, **options):
    """Write ``out/datalist.json`` for ``bundle`` from the raw dataset ``raw`` (a folder, an archive, or a folder of
    archives: :mod:`vmunet_monai.data.archives`); ``options`` are those of the bundle's importer
    (:func:`options_of`), an unknown one is an ``InputError``."""
    from vmunet_monai.data.archives import archives_left, unpack_dataset
    from vmunet_monai.data.common import DatasetLayoutError, record_archives
    from vmunet_monai.validation import check_output_location

    module = _module(bundle)
    options = _check_options(bundle, "prepare", options)
    if os.path.isdir(raw):
        check_output_location([raw], out, what="prepared folder (OUT)")  # the download stays as distributed
    folder, archives = unpack_dataset(raw, out)
    try:
        path = module.prepare(folder, out, **options)
    except DatasetLayoutError as exc:
        left = archives_left(raw)
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
    """Write a synthetic dataset for ``bundle`` in its raw layout under ``out`` (a new or empty folder, else an
    ``InputError``); ``options`` are those of the bundle's generator (ISIC: ``year``; Synapse: ``shape``,
    ``spacing``), an unknown one is an ``InputError``."""
    module = _module(bundle)
    options = _check_options(bundle, "demo_data", options)
    held = sorted(Path(out).iterdir()) if Path(out).is_dir() else []
    if held:  # a dataset written over another would keep the other's extra images (another --num, --layout)
        from vmunet_monai.validation import InputError

        raise InputError(f"{out}: holds {len(held)} entr{'y' if len(held) == 1 else 'ies'} already (first: "
                         f"{held[0].name}); demo_data writes a whole dataset into a new or empty folder, so that no "
                         f"files of another mix with it: give another folder, or empty this one")
    kwargs = {"seed": seed, **options}
    if num is not None:
        kwargs["num"] = num
    return module.demo_data(out, **kwargs)
