"""Package a bundle for the MONAI model zoo: the zoo's checks that run offline, then a zip.

``python -m vmunet_monai package BUNDLE OUT [--checkpoint PATH] [--url URL]`` checks

1. the folder: ``LICENSE``, ``configs/metadata.json``, ``configs/inference.json``, ``docs/README.md``,
   and a lowercase snake_case bundle name without a ``_v<digit>`` part (the zoo splits release
   names on it);
2. ``metadata.json`` against the schema of the zoo's required fields in
   ``vmunet_monai/resources/bundle_metadata_schema.json``, ``version`` listed in ``changelog``, and a
   ``numpy_version`` that installs on the zoo CI's Python 3.10;
3. MONAI's ``MetaProperties`` and ``InferProperties`` (and ``TrainProperties`` for ``train.json``):
   the required ids exist and the optional ones are referenced under the right ids;
4. the weights: a state dict that ``torch.load(weights_only=True)`` reads (under ``model``, ``state_dict`` or
   DataParallel's ``module.`` too: the package holds it plain) and that loads into ``network_def`` with
   ``strict=True``;
5. ``monai.bundle.verify_net_in_out`` on ``network_def``;
6. TorchScript export (traced, see :mod:`vmunet_monai.export`), checked against eager PyTorch,

and then writes a zip that unpacks to one folder named after the bundle, holding the bundle files,
``models/model.pt`` (a flat state dict) and a ``large_files.yml`` that lists ``models/model.pt``
with its sha256 (and ``--url``, where the release will host it). :func:`safe_extract` unpacks such
an archive and refuses members that would land outside the target folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vmunet_monai.data.archives import zip_member_problem
from vmunet_monai.engine.utils import find_bundle

__all__ = [
    "SCHEMA_FILE",
    "BundleCheckError",
    "UnsafeArchiveError",
    "PackageResult",
    "validate_metadata",
    "check_bundle_name",
    "check_properties_static",
    "read_state_dict",
    "check_bundle",
    "package",
    "safe_extract",
]

SCHEMA_FILE = Path(__file__).resolve().parent / "resources" / "bundle_metadata_schema.json"
REQUIRED_FILES = ("LICENSE", "configs/metadata.json", "configs/inference.json", "docs/README.md")
# folders a run writes into the bundle; never packaged (the weights travel as models/model.pt only)
SKIPPED_DIRS = {"models", "eval", "runs", "logs", "__pycache__", ".ipynb_checkpoints"}
MODEL_FILE = "models/model.pt"
# the zoo CI installs numpy_version on Python 3.10, where numpy stops at 2.2
NUMPY_MAX_FOR_ZOO = (2, 2)


class BundleCheckError(ValueError):
    """The bundle fails one or more model-zoo checks; ``problems`` lists each with the file and the rule."""

    def __init__(self, bundle: str | Path, problems: list[str]):
        self.problems = list(problems)
        super().__init__(f"bundle {bundle} is not ready for the model zoo:\n  - " + "\n  - ".join(self.problems))


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the target folder (or is a link)."""


@dataclass
class PackageResult:
    zip_path: Path
    name: str
    version: str
    model_sha256: str
    checks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.zip_path}: {self.name} v{self.version}, models/model.pt sha256 {self.model_sha256}"]
        lines += [f"  passed: {c}" for c in self.checks]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def release_notes(meta: dict, url: str) -> list[str]:
    """What the zip alone does not settle for a model-zoo release: where ``models/model.pt`` will be hosted (the zoo
    keeps the configs and downloads the weights from ``large_files.yml``'s url), and that the package the configs
    import must be installable at the version ``required_packages_version`` pins."""
    notes = []
    if not url:
        notes.append("large_files.yml has no url: the zip works with models/model.pt inside it, but the model zoo "
                     "keeps the configs alone and downloads the weights from that url (download_large_files fails "
                     "on an empty one); give --url where the release hosts model.pt")
    pinned = (meta.get("required_packages_version") or {}).get("vmunet-monai")
    if pinned:
        notes.append(f"the configs import vmunet_monai, and required_packages_version pins vmunet-monai=={pinned}: "
                     "the zoo CI and every user pip-install it, so that version must be on PyPI (or an index they use) "
                     "before the bundle is submitted")
    return notes


def _size_notes(root: Path, ckpt: Path) -> list[str]:
    """A note where the weights were trained at another input size (the ``network.json`` beside them) than the
    ``spatial_shape`` of the bundle's ``metadata.json``: the zoo's checks and a user's export take that size."""
    from vmunet_monai.engine.exported import network_input_shape
    from vmunet_monai.engine.handlers import trained_input_size

    trained = trained_input_size(ckpt)
    shape = list(network_input_shape(root / "configs" / "metadata.json"))[2:]
    if not trained or list(trained) == shape:
        return []
    return [f"the weights were trained on {'x'.join(map(str, trained))} images ({ckpt.parent / 'network.json'}) and "
            f"metadata.json's spatial_shape is {'x'.join(map(str, shape))}: for a release, set image_size in "
            f"configs/train.json and configs/inference.json, and spatial_shape in configs/metadata.json, to "
            f"{list(trained)}"]


def _schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text())


def validate_metadata(meta_file: str | Path) -> list[str]:
    """Problems of ``metadata.json`` against the zoo's required fields, each naming the file, field and rule."""
    import jsonschema

    meta_file = Path(meta_file)
    try:
        meta = json.loads(meta_file.read_text())
    except FileNotFoundError:
        return [f"{meta_file}: missing (every bundle needs configs/metadata.json)"]
    except json.JSONDecodeError as exc:
        return [f"{meta_file}: not valid JSON ({exc})"]
    problems = []
    validator = jsonschema.Draft7Validator(_schema())
    for error in sorted(validator.iter_errors(meta), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        problems.append(f"{meta_file}: {where}: {error.message} (schema rule: {'/'.join(map(str, error.schema_path))})")
    if isinstance(meta, dict):
        version, changelog = meta.get("version"), meta.get("changelog")
        if isinstance(version, str) and isinstance(changelog, dict) and version not in changelog:
            problems.append(
                f"{meta_file}: version {version!r} has no changelog entry (the zoo requires one per version)"
            )
        pred = ((meta.get("network_data_format") or {}).get("outputs") or {}).get("pred") or {}
        channels, names = pred.get("num_channels"), pred.get("channel_def")
        if isinstance(channels, int) and isinstance(names, dict):
            values = [str(v) for v in range(max(channels, 2))]  # one sigmoid channel writes 0 and 1
            if sorted(names, key=lambda k: (len(k), k)) != values:
                problems.append(
                    f"{meta_file}: network_data_format/outputs/pred/channel_def names the values {sorted(names)}, but "
                    f"a pred of {channels} channel(s) writes {', '.join(values)} (one entry per label value, 0 the "
                    "background: MONAI Label names its labels from it, and leaves the others unnamed)"
                )
        numpy_version = str(meta.get("numpy_version", ""))
        parts = re.match(r"^(\d+)\.(\d+)", numpy_version)
        if parts and (int(parts[1]), int(parts[2])) > NUMPY_MAX_FOR_ZOO:
            problems.append(
                f"{meta_file}: numpy_version {numpy_version!r} does not install on Python 3.10, which the zoo CI "
                f"runs; use {NUMPY_MAX_FOR_ZOO[0]}.{NUMPY_MAX_FOR_ZOO[1]}.x or older (1.26.4 also suits MONAI Label)"
            )
    return problems


def check_bundle_name(name: str) -> list[str]:
    """The zoo's naming rules for a bundle folder."""
    problems = []
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        problems.append(f"bundle name {name!r}: use lowercase snake_case (letters, digits, underscores)")
    if re.search(r"_v\d", name):
        problems.append(f"bundle name {name!r}: no '_v<digit>' inside the name (release keys are <name>_v<version>)")
    return problems


def check_properties_static(root: str | Path) -> list[str]:
    """MONAI's bundle properties, checked on the config text (no dataset is read).

    For ``inference.json``: ``MetaProperties`` and ``InferProperties``; for ``train.json`` (if present):
    ``TrainProperties``. Required ids must exist; optional ones, where referenced, must be referenced by
    the id MONAI expects (the same rule as ``ConfigWorkflow.check_properties``).
    """
    from monai.bundle import ConfigWorkflow
    from monai.bundle.properties import InferProperties, MetaProperties, TrainProperties
    from monai.utils import BundleProperty, BundlePropertyConfig

    root = Path(root)
    problems = []
    for config_name, kind, properties in (("inference.json", "infer", {**MetaProperties, **InferProperties}),
                                          ("train.json", "train", TrainProperties)):
        config = root / "configs" / config_name
        if not config.is_file():
            if kind == "infer":
                problems.append(f"{config}: missing")
            continue
        workflow = ConfigWorkflow(config_file=str(config), meta_file=str(root / "configs" / "metadata.json"),
                                  workflow_type=kind)
        workflow.parser.parse(reset=True)  # normalises '#' in ids and references to '::'; instantiates nothing
        for name, prop in properties.items():
            prop_id = prop[BundlePropertyConfig.ID]
            if prop.get(BundleProperty.REQUIRED, False):
                if prop_id not in workflow.parser:
                    where = "metadata.json" if prop_id.startswith("_meta_") else config_name
                    problems.append(
                        f"{root / 'configs' / where}: required property {name!r} (id {prop_id!r}) is missing"
                    )
            elif not workflow._check_optional_id(name=name, property=prop):
                problems.append(
                    f"{config}: optional property {name!r} is referenced, but not as '@{prop_id}' "
                    f"(MONAI looks it up under {prop.get(BundlePropertyConfig.REF_ID)!r})"
                )
    return problems


def read_state_dict(path: str | Path, bundle: str | Path | None = None) -> dict[str, torch.Tensor]:
    """A flat state dict from a checkpoint file, as :func:`vmunet_monai.weights.read_checkpoint` reads it: a bare
    state dict, or one under ``model``, ``state_dict`` and the like, with or without DataParallel's ``module.``. The
    package holds it as a plain state dict, which the zoo and MONAI Label load with ``weights_only=True``.

    Raises:
        BundleCheckError: for ``bundle`` (default: the file), if the file cannot be read or holds no state dict.
    """
    from vmunet_monai.weights import CheckpointError, read_checkpoint

    try:
        return read_checkpoint(Path(path))
    except CheckpointError as exc:
        raise BundleCheckError(path if bundle is None else bundle, [str(exc)]) from None


def _network(root: Path) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    return parser.get_parsed_content("network_def")


def _check_weights(root: Path, state_dict: dict, source: Path) -> list[str]:
    net = _network(root)
    where = f"{source}: does not fit network_def of {root / 'configs' / 'inference.json'} with strict=True"
    from vmunet_monai.engine.handlers import NETWORK_SETTINGS

    record = Path(source).parent / NETWORK_SETTINGS
    hint = (f" (the settings they were trained with are in {record}: a zoo bundle builds its network from its "
            f"configs, so package a copy set up for them: python -m vmunet_monai copy_bundle {root} OUT --checkpoint "
            f"{source}, then package OUT)" if record.is_file() else "")
    from vmunet_monai.weights import CheckpointError, OtherClassesError, check_checkpoint_fits, other_network_hint

    classes = None
    try:
        check_checkpoint_fits(net, state_dict)
    except CheckpointError as exc:
        classes = re.search(r"its output layer has (\d+) classes against (\d+) here", str(exc))
        family = other_network_hint(state_dict, net)
        if classes:
            hint = (f" (its output layer has {classes[1]} classes against {classes[2]} in the configs: set num_classes "
                    f"{classes[1]} in configs/train.json and configs/inference.json, and the output's num_channels "
                    f"and channel_def in configs/metadata.json, or let python -m vmunet_monai copy_bundle write a copy "
                    f"of the bundle set up for the weights)")
        elif family:  # another network's weights: its settings are beside the point
            hint = f" ({family.removeprefix('; ')})"
    try:
        result = net.load_state_dict(state_dict, strict=False)
    except OtherClassesError as exc:  # trained for another number of classes
        return [f"{where}: {exc}" if not classes else f"{where}{hint}"]
    except CheckpointError:  # none of its tensors is one of the network's (our networks refuse such a load)
        return [f"{where}: none of its {len(state_dict)} tensors is one of the network's (e.g. "
                f"{next(iter(state_dict))!r}){hint}"]
    except RuntimeError as exc:  # shape mismatches raise even without strict
        mismatches = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        return [f"{where}: {'; '.join(mismatches[:3]) or exc}{hint}"]
    if result.missing_keys or result.unexpected_keys:
        return [f"{where}: {len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:3]}), "
                f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[:3]}){hint}"]
    return []


def _bundle_files(root: Path) -> list[tuple[Path, str]]:
    """(file, path inside the bundle) for everything to package; links must stay inside the bundle."""
    root = root.resolve()
    files, problems = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for d in list(dirnames):
            if (here / d).is_symlink():
                problems.append(f"{here / d}: a linked folder; copy its files into the bundle instead")
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS and not d.startswith(".")
                             and not (here / d).is_symlink())
        for f in sorted(filenames):
            path = here / f
            if f.startswith(".") or f.endswith((".pyc", ".pyo")):
                continue
            real = path.resolve()
            if not real.is_relative_to(root):
                problems.append(f"{path}: links to {real}, outside the bundle folder {root}; refusing to package it")
                continue
            files.append((real, path.relative_to(root).as_posix()))
    if problems:
        raise BundleCheckError(root, problems)
    return files


def sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, as a hex string."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _large_files_yml(sha256: str, url: str) -> str:
    return (
        "# Files too large for the repository. `python -m monai.bundle download_large_files --bundle_path .`\n"
        "# fetches any that are missing and checks the hash of those present.\n"
        "large_files:\n"
        f'  - path: "{MODEL_FILE}"\n'
        f"    url: {json.dumps(url)}\n"
        '    hash_type: "sha256"\n'
        f'    hash_val: "{sha256}"\n'
    )


def check_bundle(bundle: str | Path, checkpoint: str | Path | None = None, export: bool = True) -> list[str]:
    """Run the offline model-zoo checks (see the module docstring) and return what passed.

    Raises:
        FileNotFoundError: if the weights are missing.
        BundleCheckError: listing every check that failed.
    """
    root = find_bundle(bundle)
    ckpt = Path(checkpoint) if checkpoint else root / MODEL_FILE
    if not ckpt.is_file():
        from vmunet_monai.engine.utils import missing_weights

        raise missing_weights(ckpt, root, train=f"python -m monai.bundle run training --config_file "
                              f"{root}/configs/train.json --bundle_root {root} --dataset_dir PREPARED",
                              given="--checkpoint" if checkpoint else None)
    passed, problems = [], []
    layout = [f"{root / f}: missing (the zoo requires it)" for f in REQUIRED_FILES if not (root / f).is_file()]
    layout += check_bundle_name(root.name)
    problems += layout
    if not layout:
        passed.append("bundle folder layout and name")
    meta = validate_metadata(root / "configs" / "metadata.json")
    problems += meta
    if not meta:
        passed.append(f"metadata.json against {SCHEMA_FILE.name}, version and changelog")
    if layout or meta:  # the rest reads the configs and metadata
        raise BundleCheckError(root, problems)
    props = check_properties_static(root)
    problems += props
    if not props:
        passed.append("MetaProperties, InferProperties and TrainProperties")
    state_dict = read_state_dict(ckpt, root)
    weights = _check_weights(root, state_dict, ckpt)
    problems += weights
    if not weights:
        passed.append("weights load into network_def with strict=True")
    if problems:
        raise BundleCheckError(root, problems)
    from monai.bundle import verify_net_in_out

    try:
        verify_net_in_out(net_id="network_def", meta_file=str(root / "configs" / "metadata.json"),
                          config_file=str(root / "configs" / "inference.json"), device="cpu", bundle_root=str(root))
    except Exception as exc:
        more = (" (configs/metadata.json's network_data_format must match the configs: the output's num_channels "
                "and channel_def follow num_classes, the input's num_channels the network's in_channels)"
                if "doesn't match" in str(exc) else "")
        raise BundleCheckError(root, [f"verify_net_in_out on network_def: {exc}{more}"]) from exc
    passed.append("verify_net_in_out")
    if export:
        from vmunet_monai.export import ExportVerificationError
        from vmunet_monai.export import export as export_model

        with tempfile.TemporaryDirectory() as tmp:
            try:
                result = export_model(str(root), "torchscript", checkpoint=str(ckpt),
                                      output=str(Path(tmp) / "model.ts"))
            except ExportVerificationError as exc:
                raise BundleCheckError(root, [str(exc)]) from exc
        passed.append(f"TorchScript export (traced), max abs diff {result.max_abs_diff:.1e} against eager")
    return passed


def package(bundle: str | Path, out: str | Path, checkpoint: str | Path | None = None, url: str = "",
            export: bool = True) -> PackageResult:
    """Check ``bundle`` (see :func:`check_bundle`) and write it with its weights as a zip.

    Args:
        bundle: a bundle name or folder.
        out: the zip file to write (``*.zip``), or a folder for ``<name>_v<version>.zip``.
        checkpoint: weights; default ``<bundle>/models/model.pt``. A file with the state dict under ``model``
            (MONAI's ``CheckpointSaver``), ``state_dict`` and the like, or with DataParallel's ``module.``, is packaged
            as the plain state dict.
        url: where the release will host ``models/model.pt`` (written into ``large_files.yml``).
        export: also run the TorchScript export check.

    Returns:
        :class:`PackageResult` with the zip path, name, version, weights hash and the checks passed.

    Raises:
        FileNotFoundError: for a missing bundle or checkpoint.
        BundleCheckError: listing every check that failed; nothing is written then.
    """
    from vmunet_monai.validation import check_output_location

    check_url(url)
    root = find_bundle(bundle)
    ckpt = Path(checkpoint) if checkpoint else root / MODEL_FILE
    out = Path(out)
    # outside the bundle: a zip written inside it would be packed into every later release
    # (a file where the folder is to be: refused here, before the checks' minute, not after)
    is_zip = out.suffix.lower() == ".zip"  # a zip's name, or the folder one is written into
    check_output_location([root], out, what="zip" if is_zip else "output folder", output_is_file=is_zip)
    checks = check_bundle(root, ckpt, export=export)
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    name, version = root.name, meta["version"]
    files = _bundle_files(root)
    zip_path = out if is_zip else out / f"{name}_v{version}.zip"
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model.pt"
        torch.save(read_state_dict(ckpt, root), weights)
        digest = sha256(weights)
        partial = zip_path.with_name(zip_path.name + ".partial")
        try:
            with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for source, rel in files:
                    if rel != "large_files.yml":  # replaced by one that lists the packaged weights
                        archive.write(source, f"{name}/{rel}")
                archive.writestr(f"{name}/large_files.yml", _large_files_yml(digest, url))
                archive.write(weights, f"{name}/{MODEL_FILE}")
            replaced = zip_path.exists()
            os.replace(partial, zip_path)
        finally:
            partial.unlink(missing_ok=True)
    notes = release_notes(meta, url) + _size_notes(root, ckpt)
    if replaced:
        notes.insert(0, f"{zip_path} held an earlier package, now replaced")
    return PackageResult(zip_path, name, version, digest, checks, notes)


def check_url(url: str) -> str:
    """``url`` if it is empty (no hosted weights) or an ``http(s)://`` or ``file://`` address with a host or path;
    MONAI's ``download_large_files`` reads nothing else, and would fail on it only when a user downloads.

    Raises:
        InputError: naming the value and the rule.
    """
    from urllib.parse import urlparse

    from vmunet_monai.validation import InputError

    if not url:
        return ""
    parts = urlparse(str(url))
    if parts.scheme not in ("http", "https", "file") or not (parts.netloc or parts.path.strip("/")):
        raise InputError(f"--url {url!r}: not an http(s):// or file:// address of the weights (where the release "
                         f"hosts models/model.pt; download_large_files fetches it from there)")
    return str(url)


def safe_extract(zip_path: str | Path, target: str | Path) -> Path:
    """Unpack a bundle archive into ``target`` and return the bundle folder (its single top-level folder).

    Raises:
        UnsafeArchiveError: before anything is written, if a member is absolute, climbs out with ``..``,
            would resolve outside ``target``, is a link, or the archive has more than one top-level folder.
        FileExistsError: if ``target`` already holds a folder of that name.
    """
    zip_path, target = Path(zip_path), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    base = target.resolve()
    with zipfile.ZipFile(zip_path) as archive:
        members = archive.infolist()
        tops = set()
        for info in members:
            problem = zip_member_problem(info, target)
            if problem:
                raise UnsafeArchiveError(f"{zip_path}: member {info.filename!r} {problem}; refusing to unpack")
            tops.add(info.filename.replace("\\", "/").split("/")[0])
        if len(tops) != 1:
            raise UnsafeArchiveError(f"{zip_path}: a bundle archive holds one folder, found {sorted(tops)}")
        folder = base / tops.pop()
        if folder.exists():
            raise FileExistsError(f"{folder} already exists; unpack {zip_path.name} into another folder or remove it")
        for info in members:
            archive.extract(info, base)
    return folder


def copy_for_weights(bundle: str | Path, out: str | Path, checkpoint: str | Path | None = None,
                     check: bool = True) -> tuple[Path, list[str]]:
    """Write into ``out`` a copy of ``bundle`` set up for the weights ``checkpoint`` (default the bundle's
    ``models/model.pt``): the settings the ``network.json`` beside them records (the class count and names, the
    network's settings, the trained input size and the 2D bundles' image scale) are written into every config
    that has them and into ``metadata.json`` (the output's ``num_channels`` and ``channel_def``, the
    ``spatial_shape``, the input's ``value_range``), and the weights become the copy's ``models/model.pt`` (a plain
    state dict, the record beside it). The copy is what ``export``, ``package``, ``predict`` and MONAI Label's
    ``BundleInferTask`` take as the bundle, with no option to repeat; the model card's recipe for your own classes,
    done by hand before.

    Args:
        check: run :func:`check_bundle` on the copy (without the export check).

    Returns:
        the copy's folder and what was changed, one line each.

    Raises:
        FileNotFoundError: no weights there.
        vmunet_monai.validation.InputError: ``out`` exists and is not empty, or lies inside the bundle; weights
            without a ``network.json`` (nothing to set).
        BundleCheckError: the copy fails the model-zoo checks (it is left for a look).
    """
    import shutil

    from monai.bundle import ConfigParser

    from vmunet_monai.engine.handlers import (NETWORK_SETTINGS, read_network_settings, trained_class_names,
                                              trained_input_size, trained_intensity_max)
    from vmunet_monai.engine.utils import missing_weights, output_channels
    from vmunet_monai.predict import binary_head, recorded_num_classes, signature_defaults, trained_network
    from vmunet_monai.validation import InputError, check_output_location

    root = find_bundle(bundle).resolve()
    ckpt = Path(checkpoint).expanduser() if checkpoint else root / MODEL_FILE
    if not ckpt.is_file():
        raise missing_weights(ckpt, root, given="--checkpoint" if checkpoint else None)
    saved = read_network_settings(ckpt)
    if saved is None:
        raise InputError(f"{ckpt}: no {NETWORK_SETTINGS} beside it, so nothing says how these weights were trained; "
                         f"copy the bundle and set its configs by hand (the model card's section on your own classes)")
    out = Path(out).expanduser()
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"{out}: holds files already; the copy is written into a new or empty folder")
    out = check_output_location([root], out, what="bundle copy")
    inference = root / "configs" / "inference.json"
    changes = trained_network([str(inference)], ckpt)
    two_d = binary_head(ConfigParser.load_config_file(str(inference)).get("network_def"))
    classes = recorded_num_classes(ckpt, ckpt, [str(inference)], say=False)  # said in the list of changes
    if classes is not None:
        changes["num_classes"] = classes
    for source, rel in _bundle_files(root):
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    (out / "models").mkdir(exist_ok=True)
    torch.save(read_state_dict(ckpt, root), out / MODEL_FILE)
    shutil.copy2(ckpt.parent / NETWORK_SETTINGS, out / "models" / NETWORK_SETTINGS)
    import pydoc

    defaults = signature_defaults(pydoc.locate(str(saved.get("_target_", ""))))
    done = []
    for config in sorted((out / "configs").glob("*.json")):
        if config.name == "metadata.json":
            continue
        data = json.loads(config.read_text())  # as written: an overlay (evaluate.json) does not parse alone
        written, said = False, []
        for key, value in changes.items():
            top, _, inner = key.partition("#")
            holder, name = (data, top) if not inner else (data.get(top), inner)
            if not isinstance(holder, dict) or (not inner and name not in holder) or holder.get(name) == value:
                continue
            if inner and holder.get("_target_") != saved.get("_target_"):  # a baseline overlay's network
                continue
            before = holder.get(name, defaults.get(name)) if inner else holder[name]
            holder[name], written = value, True
            if (list(before) if isinstance(before, tuple) else before) != value:
                said.append(f"{key} {value}")
        if written:
            config.write_text(json.dumps(data, indent=4) + "\n")
            done.append(f"{config.relative_to(out)}: {', '.join(said) or 'the settings written out, as they were'}")
    meta_path = out / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    fmt = meta.get("network_data_format", {})
    pred, image = fmt.get("outputs", {}).get("pred", {}), fmt.get("inputs", {}).get("image", {})
    total = int(classes or ConfigParser.load_config_file(str(inference)).get("num_classes", 2))
    old = pred.get("channel_def", {})
    names = trained_class_names(ckpt, total, saved) or (
        {c: str(old.get(str(c))) for c in range(1, total)} if len(old) == total else {})
    # a class the bundle names already keeps its spelling there ("left kidney" for the datalist's left_kidney):
    # MONAI Label takes these names as its labels, and a datastore labelled with the shipped bundle keeps them
    names = {c: (str(old[str(c)]) if str(old.get(str(c), "")).replace(" ", "_") == str(n).replace(" ", "_") else n)
             for c, n in names.items()}
    wanted = {"num_channels": output_channels(total) if two_d else total,
              "channel_def": {"0": "background", **{str(c): names.get(c, f"class_{c}") for c in range(1, total)}}}
    size = trained_input_size(ckpt, saved)
    if size and isinstance(pred.get("spatial_shape"), list) and len(pred["spatial_shape"]) == len(size):
        wanted["spatial_shape"] = list(size)
    meta_changes = [f"outputs.pred.{k} {v}" for k, v in wanted.items() if pred.get(k) != v]
    pred.update(wanted)
    if "spatial_shape" in wanted and image.get("spatial_shape") != wanted["spatial_shape"]:
        image["spatial_shape"] = wanted["spatial_shape"]
        meta_changes.append(f"inputs.image.spatial_shape {wanted['spatial_shape']}")
    scale = trained_intensity_max(ckpt, saved) if two_d else None
    if scale is not None and image.get("value_range") != [0, scale]:
        image["value_range"] = [0, int(scale) if float(scale).is_integer() else scale]
        meta_changes.append(f"inputs.image.value_range {image['value_range']}")
    if meta_changes:
        meta_path.write_text(json.dumps(meta, indent=4) + "\n")
        done.append(f"configs/metadata.json: {', '.join(meta_changes)}")
    if check:
        done.append("model-zoo checks: " + "; ".join(check_bundle(out, export=False)))
    return out, done
