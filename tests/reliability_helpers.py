"""Helpers for the reliability tests: tiny bundle copies with a checkpoint, small broken files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from bundle_helpers import TINY_NETWORKS, bundle_dir

TINY_CT_NETWORK = {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "depths_decoder": [1, 1, 1, 1], "d_state": 4}


def tiny_bundle_with_weights(bundle: str, target: Path, size: int = 32, seed: int = 0) -> Path:
    """``target/<bundle>``: the bundle whose inference.json builds the tiny network of its family at
    ``size`` pixels, with random weights of that network in ``models/model.pt``."""
    from monai.bundle import ConfigParser

    dest = Path(target) / bundle
    shutil.copytree(bundle_dir(bundle), dest, ignore=shutil.ignore_patterns("models", "eval", "runs", "__pycache__"))
    path = dest / "configs" / "inference.json"
    config = json.loads(path.read_text())
    net = config["network_def"]
    net.update(TINY_NETWORKS.get(net["_target_"], TINY_CT_NETWORK) if bundle != "synapse_multiorgan" else TINY_CT_NETWORK)
    for key, value in (("image_size", [size, size]), ("roi_size", [size, size]), ("num_workers", 0),
                       ("sw_batch_size", 4)):
        if key in config:
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
