"""Photos stored turned or mirrored under an EXIF orientation tag (as phone cameras store them) are read as
viewers display them, everywhere: the checks, the bundles' readers, prepare's pairing and predict's masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from reliability_helpers import tiny_bundle_with_weights

from vmunet_monai.validation import EXIF_ORIENTATION, InputError, check_image_pair_2d, read_image_upright

pytestmark = pytest.mark.usefixtures("one_thread")

# how the pixels of a picture that displays as U are stored under each orientation (EXIF 2.3, tag 0x0112):
# 2 shown mirrored left-right, 3 turned 180, 4 mirrored top-bottom, 5 transposed, 6 shown turned a quarter
# clockwise, 7 transversed, 8 shown turned a quarter anticlockwise
STORED = {
    1: lambda u: u,
    2: lambda u: u[:, ::-1],
    3: lambda u: u[::-1, ::-1],
    4: lambda u: u[::-1],
    5: lambda u: np.swapaxes(u, 0, 1),
    6: lambda u: np.rot90(u, 1),
    7: lambda u: np.swapaxes(u[::-1, ::-1], 0, 1),
    8: lambda u: np.rot90(u, -1),
}


def _save_tagged(path: Path, upright: np.ndarray, orientation: int) -> Path:
    """A lossless file whose stored pixels display as ``upright`` under ``orientation``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    Image.fromarray(np.ascontiguousarray(STORED[orientation](upright))).save(path, exif=exif)
    return path


def _picture(rng, h: int = 36, w: int = 52) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_every_orientation_reads_as_displayed(tmp_path, orientation):
    from monai.transforms import LoadImage

    from vmunet_monai.engine import gray_converter, rgb_converter

    rng = np.random.default_rng(orientation)
    upright = _picture(rng)
    path = _save_tagged(tmp_path / f"o{orientation}.png", upright, orientation)
    height, width = upright.shape[:2]
    with Image.open(path) as stored:  # (width, height) as stored
        assert stored.size == ((height, width) if orientation in (5, 6, 7, 8) else (width, height))
    pixels, found = read_image_upright(path)
    assert found == orientation
    np.testing.assert_array_equal(pixels, upright)
    # the bundles' readers (PILReader reverses the axes to (W, H, C))
    loaded = LoadImage(reader="PILReader", converter=rgb_converter, image_only=True)(str(path))
    np.testing.assert_array_equal(np.swapaxes(np.asarray(loaded), 0, 1), upright)
    grey = LoadImage(reader="PILReader", converter=gray_converter, image_only=True)(str(path))
    assert np.asarray(grey).shape == (upright.shape[1], upright.shape[0])


def test_a_mask_of_the_stored_pixels_is_named_and_an_upright_one_fits(tmp_path):
    rng = np.random.default_rng(0)
    upright = _picture(rng)
    image = _save_tagged(tmp_path / "photo.jpg", upright, 6)
    mask = np.zeros(upright.shape[:2], np.uint8)
    mask[5:20, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "upright.png")
    Image.fromarray(np.ascontiguousarray(np.rot90(mask, 1))).save(tmp_path / "stored.png")
    assert check_image_pair_2d(image, tmp_path / "upright.png")[:4] == (36, 52, 6, True)
    with pytest.raises(InputError) as caught:
        check_image_pair_2d(image, tmp_path / "stored.png")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'stored.png'}: fits the stored pixels of its image {image}")
    assert "EXIF orientation 6: shown turned a quarter clockwise" in message and "upright image" in message


def test_prepare_pairs_upright_masks_and_names_the_others(tmp_path, capsys):
    from vmunet_monai.data import prepare

    rng = np.random.default_rng(1)
    raw = tmp_path / "raw"
    for i in range(10):
        upright = _picture(rng)
        mask = np.zeros(upright.shape[:2], np.uint8)
        mask[4:16, 8 + i:30 + i] = 255
        orientation = 6 if i < 2 else (3 if i == 2 else 1)
        _save_tagged(raw / "images" / f"c{i}.png", upright, orientation)
        (raw / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(np.rot90(mask, 1) if i == 1 else mask)).save(raw / "masks" / f"c{i}.png")
    out = tmp_path / "out"
    prepare("isic_skin_lesion", str(raw), str(out))
    doc = json.loads((out / "datalist.json").read_text())
    kept = sorted(item["name"] for split in ("training", "validation", "test") for item in doc[split])
    assert kept == [f"c{i}" for i in range(10) if i != 1]
    (skip,) = doc["meta"]["skipped"]
    assert Path(skip["file"]).name == "c1.png" and "fits the stored pixels" in skip["reason"]
    err = capsys.readouterr().err
    assert f"note: 2 image(s) are stored turned or mirrored, with an EXIF orientation tag (first: {raw / 'images'}" \
        in err and "their masks must be drawn on the upright image" in err
    assert (out / "preview.png").is_file()  # drawn upright too


def test_predict_writes_the_mask_of_the_picture_as_displayed(tmp_path, capsys):
    from vmunet_monai.predict import predict

    bundle = tiny_bundle_with_weights("isic_skin_lesion", tmp_path / "bundle")
    rng = np.random.default_rng(2)
    upright = _picture(rng, 40, 64)
    (tmp_path / "in").mkdir()
    Image.fromarray(upright).save(tmp_path / "in" / "plain.png")
    _save_tagged(tmp_path / "in" / "phone.png", upright, 8)
    result = predict(str(bundle), str(tmp_path / "in"), str(tmp_path / "out"), device="cpu")
    masks = {Path(p).name: np.asarray(Image.open(p)) for p in result["masks"]}
    assert masks["phone_mask.png"].shape == (40, 64)
    np.testing.assert_array_equal(masks["phone_mask.png"], masks["plain_mask.png"])
    for overlay in result["overlays"]:
        assert Image.open(overlay).size == (64, 40)
    assert "note: 1 image(s) are stored turned or mirrored" in capsys.readouterr().err
