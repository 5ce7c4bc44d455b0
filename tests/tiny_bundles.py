"""Tiny copies of the bundles for export, packaging and MONAI Label tests.

A tiny copy is the real bundle with its configs rewritten the way a user would edit them: the
smallest network of the same family, a small image (or ROI) size, no worker processes. Its
``models/model.pt`` is a state dict of that network (random, or with a chosen constant output).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from bundle_helpers import TINY_NETWORKS, bundle_dir

BUNDLE_NAMES = ("isic_skin_lesion", "polyp_seg", "synapse_multiorgan")


def _rewrite(path: Path, edit) -> None:
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config, indent=4) + "\n")


def make_tiny_bundle(bundle: str, target: Path, size: int = 32) -> Path:
    """``target/<bundle>``: the bundle with a tiny network at ``size`` pixels; no models/ yet."""
    dest = Path(target) / bundle
    shutil.copytree(bundle_dir(bundle), dest, ignore=shutil.ignore_patterns("models", "eval", "runs", "__pycache__"))

    def shrink(config: dict) -> None:
        net = config["network_def"]
        net.update(TINY_NETWORKS[net["_target_"]])
        small = {"image_size": [size, size], "roi_size": [size, size], "num_workers": 0, "sw_batch_size": 4,
                 "cache_rate": 0.0, "batch_size": 2, "val_batch_size": 2, "val_interval": 1,
                 "iterations_per_epoch": 2, "slices_per_volume": 2, "volumes_per_batch": 2}
        for key, value in small.items():
            if key in config:
                config[key] = value

    for name in ("inference.json", "train.json"):
        _rewrite(dest / "configs" / name, shrink)

    def meta(config: dict) -> None:
        fmt = config["network_data_format"]
        fmt["inputs"]["image"]["spatial_shape"] = [size, size]
        fmt["outputs"]["pred"]["spatial_shape"] = [size, size]

    _rewrite(dest / "configs" / "metadata.json", meta)
    return dest


def tiny_network(bundle_root: Path) -> torch.nn.Module:
    """The network that ``bundle_root``'s inference.json defines."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(Path(bundle_root) / "configs" / "inference.json"))
    return parser.get_parsed_content("network_def").eval()


def final_layer(net: torch.nn.Module) -> torch.nn.Conv2d:
    """The 1x1 convolution that makes the logits (VMUNet ``final_conv``; VMUNetV2's full-resolution head)."""
    return net.final_conv if hasattr(net, "final_conv") else net.seg_outs[3]


def save_weights(bundle_root: Path, seed: int = 0, constant_class: int | None = None) -> Path:
    """Write ``models/model.pt`` (a flat state dict). With ``constant_class`` the logits no longer depend on
    the image: that class wins everywhere (for a one-channel network, class 1 = positive logit, 0 = negative)."""
    torch.manual_seed(seed)
    net = tiny_network(bundle_root)
    if hasattr(net, "sdi_1"):
        # VMUNetV2 at its initialisation multiplies four small SDI convolutions, so its output barely depends
        # on the image (1e-5); with biases of 1 each factor is ~1 + W f and the image shows in the output.
        with torch.no_grad():
            for name, param in net.named_parameters():
                if name.startswith("sdi_"):
                    param.fill_(1.0) if name.endswith("bias") else param.mul_(4.0)
    if constant_class is not None:
        if hasattr(net, "deconv6"):  # VMUNetV2 adds an upsampled coarser head: silence it
            with torch.no_grad():
                net.deconv6.weight.zero_()
                net.deconv6.bias.zero_()
        layer = final_layer(net)
        with torch.no_grad():
            layer.weight.zero_()
            bias = torch.full_like(layer.bias, -5.0)
            if layer.bias.numel() == 1:
                bias.fill_(5.0 if constant_class == 1 else -5.0)
            else:
                bias[constant_class] = 5.0
            layer.bias.copy_(bias)
    path = Path(bundle_root) / "models" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def write_rgb_image(path: Path, height: int = 40, width: int = 52, seed: int = 0) -> Path:
    """A dermoscopy-like test image: a dark blob on skin-coloured noise (JPEG or PNG by suffix)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    blob = ((yy - height / 2) ** 2 / (height / 4) ** 2 + (xx - width / 2) ** 2 / (width / 4) ** 2) < 1
    image = np.stack([200 - 120 * blob, 150 - 100 * blob, 130 - 90 * blob], -1)
    image = image + rng.integers(0, 20, (height, width, 3))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(path)
    return path


def write_mask(path: Path, height: int = 40, width: int = 52) -> Path:
    """The ISIC-style 0/255 mask of :func:`write_rgb_image`'s blob."""
    from PIL import Image

    yy, xx = np.mgrid[:height, :width]
    blob = ((yy - height / 2) ** 2 / (height / 4) ** 2 + (xx - width / 2) ** 2 / (width / 4) ** 2) < 1
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((blob * 255).astype(np.uint8)).save(path)
    return path


def write_ct_volume(path: Path, shape=(36, 30, 5), spacing=(1.5, 1.5, 3.0), seed: int = 0,
                    label: bool = False) -> Path:
    """A small CT-like NIfTI volume in Hounsfield units (or, with ``label``, an organ label map 0..8)."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    affine = np.diag(list(spacing) + [1.0])
    if label:
        data = np.zeros(shape, np.uint8)
        data[8:20, 6:18, :] = 5  # liver
        data[22:30, 18:26, 1:4] = 7  # spleen
    else:
        data = rng.normal(40, 30, shape).astype(np.float32)
        data[8:20, 6:18, :] += 60
        data[:2] = -1000  # air at the border
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path
