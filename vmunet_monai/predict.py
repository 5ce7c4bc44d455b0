"""Segment a file or a folder with a bundle's trained network (``python -m vmunet_monai predict``).

For the 2D bundles (``isic_skin_lesion``, ``polyp_seg``) this runs the bundle's own
``configs/inference.json`` with the input, output folder and checkpoint overridden, so the masks
(PNG at the input image's size) and overlays are exactly what ``monai.bundle run inferring``
writes. ``synapse_multiorgan`` goes to :func:`vmunet_monai.predict_volume.predict_volumes`.
"""

from __future__ import annotations

import os
from pathlib import Path

from vmunet_monai.engine.utils import find_bundle

__all__ = ["predict", "VOLUME_BUNDLES"]

VOLUME_BUNDLES = ("synapse_multiorgan",)


def predict(bundle: str, input: str, output: str, checkpoint: str | None = None, device: str | None = None):
    """Write ``OUTPUT/masks/**/<stem>_mask.png`` and ``OUTPUT/overlays/**/<stem>_overlay.png`` for every
    image in ``input`` (a file or a folder, searched recursively; mask folders are skipped).

    Args:
        bundle: a bundle name (``isic_skin_lesion``, ``polyp_seg``, ``synapse_multiorgan``) or the path
            of a bundle folder (e.g. the one ``demo`` trains).
        input: an image file or a folder of images.
        output: output folder.
        checkpoint: weights to use; default ``<bundle>/models/model.pt``.
        device: ``cpu``, ``cuda`` or ``cuda:N``; default: CUDA when available.

    Returns:
        ``{"masks": [...], "overlays": [...]}``, the paths written (for ``synapse_multiorgan``, the
        list of segmentation files that :func:`~vmunet_monai.predict_volume.predict_volumes` returns).

    Raises:
        FileNotFoundError: for a missing input, bundle or checkpoint (with the command that makes one).
    """
    if Path(str(bundle)).name in VOLUME_BUNDLES:
        from vmunet_monai.predict_volume import predict_volumes

        bundle_root = str(find_bundle(bundle)) if (Path(str(bundle)) / "configs").is_dir() else None
        return predict_volumes(input, output, checkpoint=checkpoint, device=device, bundle_root=bundle_root)

    from monai.bundle import ConfigWorkflow

    root = find_bundle(bundle)
    if not Path(input).exists():
        raise FileNotFoundError(f"input {input}: no such file or folder")
    ckpt = Path(checkpoint) if checkpoint else root / "models" / "model.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(
            f"no trained weights at {ckpt}: train first (python -m monai.bundle run training --config_file "
            f"{root}/configs/train.json --bundle_root {root} --dataset_dir PREPARED) or pass --checkpoint PATH"
        )
    overrides = {
        "bundle_root": str(root),
        "input_dir": os.path.abspath(input),
        "output_dir": os.path.abspath(output),
        "checkpoint": str(ckpt.resolve()),
        "num_workers": 0,
    }
    if device:
        overrides["device"] = f"$torch.device('{device}')"
    workflow = ConfigWorkflow(
        config_file=str(root / "configs" / "inference.json"),
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf"),
        workflow_type="infer",
        **overrides,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    out = Path(output)
    masks = sorted(str(p) for p in (out / "masks").rglob("*_mask.png"))
    overlays = sorted(str(p) for p in (out / "overlays").rglob("*_overlay.png"))
    print(f"{len(masks)} masks under {out / 'masks'}, {len(overlays)} overlays under {out / 'overlays'}")
    return {"masks": masks, "overlays": overlays}
