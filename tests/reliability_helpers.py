"""Helpers for the reliability tests: tiny bundle copies with a checkpoint, small broken files."""

from __future__ import annotations

import json
import locale
import shutil
from pathlib import Path

import numpy as np
import torch
from bundle_helpers import TINY_NETWORKS, bundle_dir

TINY_CT_NETWORK = {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "depths_decoder": [1, 1, 1, 1], "d_state": 4}


def tiny_bundle_with_weights(bundle: str, target: Path, size: int = 32, seed: int = 0, num_classes: int | None = None
                             ) -> Path:
    """``target/<bundle>``: the bundle whose inference.json builds the tiny network of its family at
    ``size`` pixels (for ``num_classes`` classes: the bundle's default unless given), with random weights of that
    network in ``models/model.pt``."""
    from monai.bundle import ConfigParser

    dest = Path(target) / bundle
    shutil.copytree(bundle_dir(bundle), dest, ignore=shutil.ignore_patterns("models", "eval", "runs", "__pycache__"))
    path = dest / "configs" / "inference.json"
    config = json.loads(path.read_text())
    net = config["network_def"]
    net.update(TINY_CT_NETWORK if bundle == "synapse_multiorgan" else TINY_NETWORKS[net["_target_"]])
    for key, value in (("image_size", [size, size]), ("roi_size", [size, size]), ("num_workers", 0),
                       ("sw_batch_size", 4), ("num_classes", num_classes)):
        if key in config and value is not None:
            config[key] = value
    path.write_text(json.dumps(config, indent=4) + "\n")
    parser = ConfigParser()
    parser.read_config(str(path))
    torch.manual_seed(seed)
    network = parser.get_parsed_content("network_def")
    (dest / "models").mkdir()
    torch.save(network.state_dict(), dest / "models" / "model.pt")
    return dest


def write_rgb(path: Path, height: int = 40, width: int = 52, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_ct_volume(path: Path, shape=(48, 44, 10), spacing=(0.8, 0.7, 3.0), dtype=np.int16, seed: int = 0) -> Path:
    """A small CT-like NIfTI (fat with a soft-tissue block and a gas block) stored with an LPS-like affine."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    hu = np.full(shape, -100, dtype=np.float32) + rng.normal(0, 5, shape).astype(np.float32)
    hu[4:18, 4:16, 1:4] = 60
    hu[30:42, 26:40, 6:9] = -1000
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [20.0, 15.0, -12.0]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(hu.astype(dtype), affine), str(path))
    return path


def write_dicom_series(volume_path: Path, folder: Path) -> Path:
    """Write the NIfTI volume as a CT DICOM series (one file per slice, with position, orientation and UIDs)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True)
    return write_dicom_slices(sitk.ReadImage(str(volume_path)), folder, "1.2.826.0.1.3680043.2.1125.7.2")


def write_dicom_slices(image, folder: Path, series_uid: str, study_uid: str = "1.2.826.0.1.3680043.2.1125.7.1",
                       zs=None, prefix: str = "slice", description: str = "", number: str = "", shift=None) -> Path:
    """Write the slices ``zs`` (all by default) of the SimpleITK volume ``image`` as CT DICOM files of the series
    ``series_uid`` into ``folder`` (one file per slice, with position, orientation, SeriesDescription and
    SeriesNumber where given); ``shift`` moves slice z's position by ``shift[z]`` mm along the slice normal."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    d = image.GetDirection()
    normal = np.array([d[2], d[5], d[8]])
    shared = {"0008|0060": "CT", "0020|000d": study_uid, "0020|000e": series_uid,
              "0020|0037": "\\".join(f"{v:.8f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
              "0018|0050": f"{image.GetSpacing()[2]:.4f}"}
    if description:
        shared["0008|103e"] = description
    if number:
        shared["0020|0011"] = number
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    saved = locale.setlocale(locale.LC_ALL)  # GDCM's writer switches the process to the C (ASCII) locale
    try:
        for z in (range(image.GetDepth()) if zs is None else zs):
            plane = image[:, :, z]
            for tag, value in shared.items():
                plane.SetMetaData(tag, value)
            corner = np.array(image.TransformIndexToPhysicalPoint((0, 0, z)))
            if shift is not None:
                corner = corner + shift[z] * normal
            plane.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in corner))
            plane.SetMetaData("0020|0013", str(z + 1))
            plane.SetMetaData("0008|0018", f"{series_uid}.{z + 1}")
            writer.SetFileName(str(folder / f"{prefix}{z:03d}.dcm"))
            writer.Execute(plane)
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    return folder
