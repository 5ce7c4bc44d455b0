"""Property-based tests (hypothesis) over image sizes, dtypes and channel counts.

- Networks: any height and width (1 to 100 pixels, odd ones included) give logits of the input's size,
  identical to running the zero-padded input and cropping; 1- or 3-channel input where the network
  takes 3 channels; any other channel count, or integer input, is a ValueError naming the rule.
- ``predict``: images of any size, bit depth and colour mode (grey, grey+alpha, palette, RGB, RGBA,
  16-bit, float) give a 0/255 mask and an overlay of the input's size.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vmunet_monai.networks import MambaUNet, VMUNet, VMUNetV2

TINY = dict(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), d_state=4, drop_path_rate=0.0)
FAMILIES = {"VMUNet": (VMUNet, {"depths_decoder": (1, 1, 1, 1)}), "VMUNetV2": (VMUNetV2, {"mid_channels": 8}),
            "MambaUNet": (MambaUNet, {})}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks in-process: see conftest


@functools.lru_cache(maxsize=None)
def _network(name: str) -> torch.nn.Module:
    cls, extra = FAMILIES[name]
    torch.manual_seed(0)
    return cls(in_channels=3, out_channels=2, **TINY, **extra).eval()


sizes = st.integers(min_value=1, max_value=100)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(name=st.sampled_from(sorted(FAMILIES)), batch=st.integers(1, 2), height=sizes, width=sizes,
       channels=st.sampled_from([1, 3]), dtype=st.sampled_from([torch.float32, torch.float64, torch.float16]))
def test_networks_accept_any_size_by_padding(name, batch, height, width, channels, dtype):
    net = _network(name)
    x = torch.rand(batch, channels, height, width, generator=torch.Generator().manual_seed(height * 101 + width))
    with torch.no_grad():
        y = net(x.to(dtype))
        assert y.shape == (batch, 2, height, width) and y.dtype == torch.float32
        assert torch.isfinite(y).all()
        if dtype == torch.float32:
            # the network pads with zeros to a multiple of 32 and crops: exactly what padding by hand gives
            ph, pw = (-height) % 32, (-width) % 32
            padded = net(F.pad(x, (0, pw, 0, ph)))[..., :height, :width]
            assert torch.allclose(y, padded, atol=1e-5, rtol=1e-5)
            if channels == 1:  # a grey image is the same image repeated to three channels
                assert torch.allclose(y, net(x.expand(-1, 3, -1, -1)), atol=1e-5, rtol=1e-5)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(name=st.sampled_from(sorted(FAMILIES)), channels=st.sampled_from([2, 4, 5, 8]), height=sizes, width=sizes)
def test_networks_refuse_other_channel_counts_clearly(name, channels, height, width):
    with pytest.raises(ValueError, match=rf"built for 3-channel input \(or 1 channel, repeated\); got {channels}"):
        _network(name)(torch.zeros(1, channels, height, width))


@settings(max_examples=6, deadline=None, derandomize=True)
@given(name=st.sampled_from(sorted(FAMILIES)), dtype=st.sampled_from([torch.uint8, torch.int16, torch.int64,
                                                                      torch.bool]))
def test_networks_refuse_integer_input_clearly(name, dtype):
    with pytest.raises(ValueError, match=f"floating-point images .* got {dtype}"):
        _network(name)(torch.zeros(1, 3, 32, 32, dtype=dtype))


# ----------------------------------------------------------------------------------------------------
# predict

MODES = {
    # mode: (file suffix, how to make the pixel array from a random generator)
    "L": (".png", lambda rng, h, w: rng.integers(0, 256, (h, w), dtype=np.uint8)),
    "LA": (".png", lambda rng, h, w: rng.integers(0, 256, (h, w, 2), dtype=np.uint8)),
    "RGB": (".jpg", lambda rng, h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)),
    "RGBA": (".png", lambda rng, h, w: rng.integers(0, 256, (h, w, 4), dtype=np.uint8)),
    "P": (".png", lambda rng, h, w: rng.integers(0, 16, (h, w), dtype=np.uint8)),
    "I;16": (".png", lambda rng, h, w: rng.integers(0, 65536, (h, w), dtype=np.uint16)),
    "F": (".tif", lambda rng, h, w: rng.normal(0, 1000, (h, w)).astype(np.float32)),
    "1": (".png", lambda rng, h, w: rng.integers(0, 2, (h, w), dtype=np.uint8).astype(bool)),
}


def _save(array: np.ndarray, mode: str, path) -> None:
    if mode == "P":
        image = Image.fromarray(array, mode="L").convert("P")
    elif mode in ("LA", "RGBA", "RGB"):
        image = Image.fromarray(array, mode=mode)
    else:
        image = Image.fromarray(array)
    image.save(path)


@pytest.fixture(scope="module")
def lesion_bundle(tmp_path_factory):
    from reliability_helpers import tiny_bundle_with_weights

    return tiny_bundle_with_weights("isic_skin_lesion", tmp_path_factory.mktemp("prop_bundle"))


image_specs = st.lists(st.tuples(st.sampled_from(sorted(MODES)), st.integers(2, 90), st.integers(2, 90)),
                       min_size=1, max_size=4)


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=image_specs)
def test_predict_writes_a_binary_mask_of_the_input_size_for_any_image(lesion_bundle, tmp_path_factory, specs):
    from vmunet_monai.predict import predict

    work = tmp_path_factory.mktemp("prop")
    rng = np.random.default_rng(len(specs))
    sources = []
    for i, (mode, height, width) in enumerate(specs):
        suffix, make = MODES[mode]
        path = work / "in" / f"img{i}_{mode.replace(';', '')}{suffix}"
        path.parent.mkdir(exist_ok=True)
        _save(make(rng, height, width), mode, path)
        sources.append(path)
    result = predict(str(lesion_bundle), str(work / "in"), str(work / "out"), device="cpu")
    assert result["skipped"] == []
    assert len(result["masks"]) == len(sources)
    for path in sources:
        with Image.open(path) as image, Image.open(work / "out" / "masks" / f"{path.stem}_mask.png") as mask, \
                Image.open(work / "out" / "overlays" / f"{path.stem}_overlay.png") as overlay:
            assert mask.size == overlay.size == image.size, (path.name, mask.size, image.size)
            assert set(np.unique(np.asarray(mask))) <= {0, 255}


def test_predict_names_images_too_small_to_write(lesion_bundle, tmp_path):
    """One-pixel-high images (found by the property above) are skipped with the rule, not a writer crash."""
    from vmunet_monai.predict import predict

    Image.fromarray(np.zeros((1, 7, 3), np.uint8)).save(tmp_path / "line.png")
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "small.png")
    result = predict(str(lesion_bundle), str(tmp_path), str(tmp_path.parent / f"{tmp_path.name}_out"), device="cpu")
    assert [s["reason"] for s in result["skipped"]] == [
        f"{tmp_path / 'line.png'}: is 1x7 pixels (predict needs images of at least 2x2 pixels)"]
    assert [m.rsplit("/", 1)[-1] for m in result["masks"]] == ["small_mask.png"]
