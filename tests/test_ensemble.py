"""Ensembles: several checkpoints of one network run as one model, their class probabilities averaged
(EnsembleInferer, ``predict --checkpoint a.pt,b.pt``), on images and on volumes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import SliceInferer
from PIL import Image
from reliability_helpers import tiny_bundle_with_weights, write_ct_volume, write_rgb

from vmunet_monai.engine import EnsembleInferer, FlipTTAInferer, PlainTensorInferer, ensemble_members
from vmunet_monai.validation import InputError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks in-process: see conftest


def _net(seed: int, out: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, out, 3,
                                                                                                     padding=1))


@torch.no_grad()
def test_the_ensemble_is_the_logit_of_the_mean_probability():
    nets = [_net(s) for s in range(3)]
    x = torch.rand(2, 3, 9, 11)
    out = EnsembleInferer(PlainTensorInferer(), members=nets[1:], activation="sigmoid")(x, nets[0])
    expected = torch.stack([torch.sigmoid(n(x)) for n in nets]).mean(0)
    assert torch.allclose(torch.sigmoid(out), expected, atol=1e-6)
    assert not torch.allclose(expected, torch.sigmoid(nets[0](x)), atol=1e-3)  # the members did change it
    assert torch.equal(EnsembleInferer(PlainTensorInferer())(x, nets[0]), nets[0](x))  # no members: the network


@torch.no_grad()
def test_members_go_through_the_inner_inferer_and_its_activation():
    """Each member is mirrored by a FlipTTAInferer and slid over the slices of a volume; the softmax of the result
    is the mean over members and flips, and the activation comes from the inner inferer."""
    nets = [_net(s, out=5) for s in (3, 4)]
    for n in nets:
        n[0] = torch.nn.Conv2d(1, 4, 3, padding=1)
    volume = torch.rand(1, 1, 12, 10, 3)
    tta = FlipTTAInferer(SliceInferer(roi_size=(12, 10), spatial_dim=2, sw_batch_size=2), activation="softmax")
    ensemble = EnsembleInferer(tta, members=nets[1:])
    assert ensemble.activation == "softmax"
    out = ensemble(volume, nets[0])
    expected = torch.stack([torch.softmax(tta(volume, n), 1) for n in nets]).mean(0)
    assert out.shape == (1, 5, 12, 10, 3)
    assert torch.allclose(torch.softmax(out, 1), expected, atol=1e-6)
    with pytest.raises(ValueError, match="EnsembleInferer activation='tanh'"):
        EnsembleInferer(activation="tanh")


def test_members_load_their_checkpoints_and_follow_the_evaluator_mode(tmp_path):
    from vmunet_monai.weights import CheckpointError

    base, other = _net(0), _net(1)
    base.append(torch.nn.Dropout(0.5))
    other.append(torch.nn.Dropout(0.5))
    torch.save(other.state_dict(), tmp_path / "other.pt")
    (member,) = ensemble_members(base, [str(tmp_path / "other.pt")], device="cpu")
    assert member is not base and not member.training
    assert all(torch.equal(a, b) for a, b in zip(member.state_dict().values(), other.state_dict().values()))
    x = torch.rand(1, 3, 6, 6)
    base.eval()
    member.train()
    with torch.no_grad():  # the evaluator's network is in eval mode: so is every member, dropout off
        a = EnsembleInferer(members=[member])(x, base)
        assert torch.equal(a, EnsembleInferer(members=[member])(x, base)) and not member.training
    torch.save(_net(1, out=2).state_dict(), tmp_path / "wider.pt")
    with pytest.raises(CheckpointError, match="wider.pt"):
        ensemble_members(base, [str(tmp_path / "wider.pt")])


@pytest.fixture(scope="module")
def lesion_bundle(tmp_path_factory):
    return tiny_bundle_with_weights("isic_skin_lesion", tmp_path_factory.mktemp("lesion"))


def _second_weights(bundle: Path, path: Path, gain: float = 30.0) -> Path:
    """Other weights for the bundle's network, with a final layer steep enough that their probabilities differ
    from the first weights' by far more than a grey level."""
    from tiny_bundles import final_layer, tiny_network

    torch.manual_seed(7)
    net = tiny_network(bundle)
    with torch.no_grad():
        final_layer(net).weight.mul_(gain)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def test_predict_averages_the_probabilities_of_several_checkpoints(lesion_bundle, tmp_path):
    from vmunet_monai.predict import predict

    write_rgb(tmp_path / "in" / "a.png", 37, 45)
    write_rgb(tmp_path / "in" / "b.png", 40, 52, seed=3)
    first = lesion_bundle / "models" / "model.pt"
    second = _second_weights(lesion_bundle, tmp_path / "seed1" / "model.pt")
    maps = {}
    for name, checkpoint in (("a", str(first)), ("b", str(second)), ("ab", f"{first},{second}")):
        result = predict(str(lesion_bundle), str(tmp_path / "in"), str(tmp_path / name), checkpoint=checkpoint,
                         device="cpu", probabilities=True)
        maps[name] = [np.asarray(Image.open(p), dtype=float) for p in result["probabilities"]]
    for a, b, ab in zip(maps["a"], maps["b"], maps["ab"]):
        assert np.abs(a - b).max() > 40  # the two models disagree
        assert np.abs(ab - (a + b) / 2).max() <= 1.0  # grey levels of the mean probability, to rounding
    record = json.loads((tmp_path / "ab" / "prediction.json").read_text())
    assert record["weights"] == [str(first.resolve()), str(second.resolve())]
    assert record["weights_sha256"] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in (first, second)]
    single = json.loads((tmp_path / "a" / "prediction.json").read_text())
    assert single["weights"] == str(first.resolve())  # one model: a path, as before


def test_predict_names_what_is_wrong_with_an_ensemble(lesion_bundle, tmp_path):
    from vmunet_monai.predict import predict
    from vmunet_monai.weights import CheckpointError

    write_rgb(tmp_path / "in" / "a.png")
    first = lesion_bundle / "models" / "model.pt"
    foreign = tiny_bundle_with_weights("polyp_seg", tmp_path / "other") / "models" / "model.pt"  # a VM-UNetV2
    cases = ((f"{first},{tmp_path / 'nowhere.pt'}", InputError,
              f"{tmp_path / 'nowhere.pt'}: no such weight file, listed in --checkpoint"),
             (f"{first},,{first}", InputError, "an empty item"),
             (f"{first},{first}", InputError, f"{first} is given twice"),
             (f"{first},{foreign}", CheckpointError, str(foreign)))
    for checkpoint, error, message in cases:
        with pytest.raises(error) as failure:
            predict(str(lesion_bundle), str(tmp_path / "in"), str(tmp_path / "out"), checkpoint=checkpoint,
                    device="cpu")
        assert message in str(failure.value), str(failure.value)
    assert not (tmp_path / "out" / "masks").exists()  # refused before any mask was written
    # the second member's own network.json was not read (the network is the first's): the message said it was, and
    # that the file, if of another training, should be moved away
    from monai.bundle import ConfigParser

    from vmunet_monai.engine.handlers import write_network_settings

    parser = ConfigParser()
    parser.read_config(str(foreign.parent.parent / "configs" / "inference.json"))
    write_network_settings(foreign.parent, parser.get_parsed_content("network_def"), [32, 32])
    with pytest.raises(CheckpointError) as failure:
        predict(str(lesion_bundle), str(tmp_path / "in"), str(tmp_path / "out"), checkpoint=f"{first},{foreign}",
                device="cpu")
    said = str(failure.value)
    assert said.startswith(str(foreign)) and "move it away" not in said, said
    assert said.endswith(f"; the network was built for the ensemble's first member, {first}: the members of an "
                         f"ensemble must be of one network"), said


def test_members_of_other_sizes_are_warned_of_and_of_other_scales_refused(tmp_path, caplog):
    """The network.json beside each member records the size and the image scale it was trained at: one size feeds
    every member (a warning names each), and one scale too (refused: a member fed another scale is wrong)."""
    import logging

    from vmunet_monai.engine import checkpoint_list

    def member(name, size, scale):
        path = tmp_path / name / "model.pt"
        path.parent.mkdir()
        path.write_bytes(b"weights")
        desc = {"trained_input_size": size} if scale is None else {"trained_input_size": size, "intensity_max": scale}
        (path.parent / "network.json").write_text(json.dumps({"_desc_": desc}))
        return str(path)

    small, large, old = member("a", [64, 64], 255.0), member("b", [128, 96], 255.0), member("c", [64, 64], None)
    caplog.set_level(logging.WARNING, logger="vmunet_monai.engine.inferers")
    assert checkpoint_list(f"{small},{large}", option="--checkpoint") == [small, large]
    (warned,) = [r.getMessage() for r in caplog.records]
    assert warned.startswith(f"--checkpoint: the members were trained at different input sizes ({small}: 64x64, "
                             f"{large}: 128x96); every member runs at 64x64")
    caplog.clear()
    assert checkpoint_list([small, member("d", [64, 64], 255.0)]) and not caplog.records  # one size: no word
    with pytest.raises(InputError, match=rf"--checkpoint: the members were trained on images of different scales "
                                         rf"\({small}: 0-255, {old}: 0-1\)"):
        checkpoint_list(f"{small},{old}", option="--checkpoint")


def _constant_weights(bundle: Path, path: Path, biases: dict[int, float]) -> Path:
    """Weights whose logits do not depend on the image: ``biases`` per class, -5 for the others."""
    from tiny_bundles import final_layer, tiny_network

    net = tiny_network(bundle)
    layer = final_layer(net)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.fill_(-5.0)
        for c, b in biases.items():
            layer.bias[c] = b
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def test_volume_ensemble_follows_the_mean_not_the_first_member(tmp_path):
    """Member A prefers organ 2 (p 0.73 against 0.27 for organ 4), member B organ 4 (0.88 against 0.12): alone A
    labels every voxel 2, together they label it 4, the class of the mean probability (0.575 against 0.425)."""
    from vmunet_monai.predict_volume import predict_volumes

    bundle = tiny_bundle_with_weights("synapse_multiorgan", tmp_path / "bundle")
    a = _constant_weights(bundle, tmp_path / "a" / "model.pt", {2: 5.0, 4: 4.0})
    b = _constant_weights(bundle, tmp_path / "b" / "model.pt", {4: 5.0, 2: 3.0})
    write_ct_volume(tmp_path / "scans" / "case.nii.gz", shape=(24, 20, 3))
    alone = predict_volumes(str(tmp_path / "scans"), str(tmp_path / "alone"), checkpoint=str(a), device="cpu",
                            bundle_root=str(bundle), montage=False)
    both = predict_volumes(str(tmp_path / "scans"), str(tmp_path / "both"), checkpoint=[str(a), str(b)],
                           device="cpu", bundle_root=str(bundle), montage=False)
    assert np.unique(np.asarray(nib.load(alone[0]).dataobj)).tolist() == [2]
    assert np.unique(np.asarray(nib.load(both[0]).dataobj)).tolist() == [4]
    record = json.loads((tmp_path / "both" / "prediction.json").read_text())
    assert record["weights"] == [str(a.resolve()), str(b.resolve())]


def _entropy(p: torch.Tensor, activation: str) -> torch.Tensor:
    """Normalised entropy by the formula, over all classes (softmax) or as the mean of each channel's binary
    entropy (sigmoid)."""
    if activation == "softmax":
        return (-(p * p.clamp_min(1e-30).log()).sum(1, keepdim=True)) / np.log(p.shape[1])
    q = 1 - p
    return (-(p * p.clamp_min(1e-30).log() + q * q.clamp_min(1e-30).log())).mean(1, keepdim=True) / np.log(2)


@torch.no_grad()
@pytest.mark.parametrize("activation,out", [("sigmoid", 1), ("softmax", 4), ("sigmoid", 3)])
def test_spread_appends_the_mean_entropy_of_every_flip_of_every_member(activation, out):
    """With ``spread`` the ensemble of TTA passes gives the classes (as without it) and one channel more: the mean
    over all 3 members x 4 flips of each pass's own entropy; the entropy of the mean is never below it."""
    nets = [_net(s, out=out) for s in (5, 6, 7)]
    x = torch.randn(2, 3, 10, 12)
    tta = FlipTTAInferer(activation=activation)
    plain = EnsembleInferer(tta, members=nets[1:])(x, nets[0])
    spread = EnsembleInferer(tta, members=nets[1:], spread=True)(x, nets[0])
    assert spread.shape == (2, out + 1, 10, 12)
    assert torch.allclose(spread[:, :out], plain, atol=1e-5)
    act = torch.sigmoid if activation == "sigmoid" else (lambda t: torch.softmax(t, 1))
    probs = [act(torch.flip(n(torch.flip(x, d)), d) if d else n(x)) for n in nets for d in ([], [2], [3], [2, 3])]
    expected = torch.stack([_entropy(p, activation) for p in probs]).mean(0)
    assert torch.allclose(spread[:, out:], expected, atol=1e-5)
    mean = torch.stack(probs).mean(0)
    assert torch.allclose(act(spread[:, :out]), mean, atol=1e-5)
    gap = _entropy(mean, activation) - spread[:, out:]  # the disagreement: never negative, here not zero
    assert gap.min() > -1e-5 and gap.max() > 1e-3
    # one pass (no members, TTA off): the channel is that pass's entropy, so nothing is left to disagree
    alone = EnsembleInferer(FlipTTAInferer(activation=activation, enabled=False), spread=True)(x, nets[0])
    assert torch.allclose(alone[:, out:], _entropy(act(nets[0](x)), activation), atol=1e-5)
    assert torch.allclose(act(alone[:, :out]), act(nets[0](x)), atol=1e-5)


@torch.no_grad()
def test_spread_of_the_flips_alone_and_bad_settings():
    nets = [_net(8, out=3)]
    x = torch.randn(1, 3, 8, 8)
    out = FlipTTAInferer(activation="softmax", spread=True)(x, nets[0])
    probs = [torch.softmax(torch.flip(nets[0](torch.flip(x, d)), d) if d else nets[0](x), 1)
             for d in ([], [2], [3], [2, 3])]
    assert torch.allclose(out[:, 3:], torch.stack([_entropy(p, "softmax") for p in probs]).mean(0), atol=1e-5)
    with pytest.raises(ValueError, match="FlipTTAInferer spread=True needs probabilities"):
        FlipTTAInferer(activation="none", spread=True)
    with pytest.raises(ValueError, match="EnsembleInferer spread=True needs probabilities"):
        EnsembleInferer(activation="none", spread=True)


def test_split_pass_entropy_moves_the_last_channel_for_invertd():
    from monai.data import MetaTensor

    from vmunet_monai.engine import SplitPassEntropyd

    pred = torch.rand(4, 6, 5)
    d = SplitPassEntropyd("pred", enabled=True)({"pred": pred})
    assert torch.equal(d["pred"], pred[:3]) and torch.equal(d["pass_entropy"], pred[3:])
    assert isinstance(d["pass_entropy"], MetaTensor)  # Invertd inverts MetaTensors only
    assert SplitPassEntropyd("pred")({"pred": pred})["pred"] is pred  # off: untouched
    with pytest.raises(ValueError, match=r"'pred' has shape \(1, 6, 5\); with pass_entropy on"):
        SplitPassEntropyd("pred", enabled=True)({"pred": torch.rand(1, 6, 5)})
