"""Flip test-time augmentation (FlipTTAInferer): the averaged probabilities, on images and on volumes."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SliceInferer

from vmunet_monai.engine import FlipTTAInferer, PlainTensorInferer

FLIPS = ([], [2], [3], [2, 3])


def _manual(inferer, x, net, activation):
    probs = []
    for dims in FLIPS:
        out = inferer(torch.flip(x, dims) if dims else x, net)
        out = torch.flip(out, dims) if dims else out
        probs.append(torch.sigmoid(out) if activation == "sigmoid" else torch.softmax(out, 1))
    return torch.stack(probs).mean(0)


@torch.no_grad()
def test_sigmoid_outputs_are_the_logits_of_the_mean_probability():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 5, padding=2))
    x = torch.rand(2, 3, 12, 10)
    out = FlipTTAInferer(activation="sigmoid")(x, net)
    expected = _manual(PlainTensorInferer(), x, net, "sigmoid")
    assert torch.allclose(torch.sigmoid(out), expected, atol=1e-6)
    assert not torch.allclose(expected, torch.sigmoid(net(x)), atol=1e-3)  # the flips did change something
    assert torch.equal(FlipTTAInferer(enabled=False)(x, net), net(x))


@torch.no_grad()
def test_softmax_over_a_sliding_window_of_slices():
    torch.manual_seed(1)
    net = torch.nn.Conv2d(1, 9, 3, padding=1)
    volume = torch.rand(1, 1, 20, 16, 5)
    slices = SliceInferer(roi_size=(16, 16), spatial_dim=2, sw_batch_size=3)
    out = FlipTTAInferer(slices, activation="softmax")(volume, net)
    assert out.shape == (1, 9, 20, 16, 5)
    assert torch.allclose(torch.softmax(out, 1), _manual(slices, volume, net, "softmax"), atol=1e-6)


@torch.no_grad()
def test_a_mirror_symmetric_network_is_unchanged():
    net = torch.nn.Conv2d(3, 1, 1)  # a 1x1 convolution commutes with every flip
    x = torch.rand(1, 3, 8, 8)
    assert torch.allclose(torch.sigmoid(FlipTTAInferer()(x, net)), torch.sigmoid(net(x)), atol=1e-6)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="activation='relu'"):
        FlipTTAInferer(activation="relu")
    with pytest.raises(ValueError, match="at least one entry"):
        FlipTTAInferer(flips=[])
    with pytest.raises(ValueError, match=r"flip axes \[2\]: the input has spatial axes 0 to 1"):
        FlipTTAInferer(flips=[[2]])(torch.rand(1, 1, 4, 4), torch.nn.Identity())
