"""Official checkpoints into our networks: key mapping, strict mode, VMamba v0 initialisation, bad files."""

import pathlib
import re

import pytest
import torch

from vmunet_monai.networks import MambaUNet, VMUNet, VMUNetV2
from vmunet_monai.weights import CheckpointError, load_official_checkpoint

DATA = pathlib.Path(__file__).parent / "data"
TINY = dict(dims=(8, 16, 32, 64), d_state=4)


def official_vmunet_checkpoint():
    """Random tensors under the official key names and shapes (official_code.md appendix)."""
    sd = {}
    for line in (DATA / "official_vmunet_state_dict.txt").read_text().splitlines():
        key, shape = line.split(" ", 1)
        sd[key] = torch.randn(*(int(s) for s in shape.strip("()").split(",") if s))
    return {"model": sd, "epoch": 300}


def test_official_vmunet_checkpoint_loads_strictly(tmp_path):
    ckpt = official_vmunet_checkpoint()
    path = tmp_path / "best.pth"
    torch.save(ckpt, path)
    net = VMUNet()
    report = load_official_checkpoint(net, path, strict=True)
    assert report.kind == "vmunet" and len(report.loaded) == 222 and report.ok
    ours = net.state_dict()
    for key, value in ckpt["model"].items():
        assert torch.equal(ours[key[len("vmunet."):]], value)


def test_data_parallel_prefix_and_bare_state_dict():
    sd = {"module." + k: v for k, v in official_vmunet_checkpoint()["model"].items()}
    assert load_official_checkpoint(VMUNet(), sd, strict=True).ok


def test_strict_raises_on_a_foreign_or_partial_checkpoint():
    sd = official_vmunet_checkpoint()["model"]
    sd.pop("vmunet.final_conv.bias")
    with pytest.raises(CheckpointError, match="missing .*: 1"):
        load_official_checkpoint(VMUNet(), sd, strict=True)
    report = load_official_checkpoint(VMUNet(out_channels=9), official_vmunet_checkpoint(), strict=False)
    assert [k for k, _, _ in report.mismatched] == ["final_conv.weight", "final_conv.bias"]
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_official_checkpoint(VMUNet(out_channels=9), official_vmunet_checkpoint(), strict=True)
    foreign = {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 512)}
    with pytest.raises(CheckpointError, match=r"(?s)not one tensor fits .*\(unknown\): 0 tensors loaded.*"
                                              r"unexpected \(not used\): 2: conv1.weight, fc.weight"):
        load_official_checkpoint(VMUNet(**TINY), foreign)


def test_official_mamba_unet_and_v2_checkpoints_load_strictly():
    mu = MambaUNet(**TINY)
    sd = {"mamba_unet." + k: torch.randn_like(v.float()).to(v.dtype) for k, v in mu.state_dict().items()}
    report = load_official_checkpoint(MambaUNet(**TINY), sd, strict=True)
    assert report.kind == "mamba_unet" and len(report.loaded) == len(sd)

    v2 = VMUNetV2(mid_channels=8, **TINY)
    sd = {}
    for k, v in v2.state_dict().items():
        key = "vmunet." + k[len("encoder."):] if k.startswith("encoder.") else k
        sd[key] = torch.randn_like(v.float()).to(v.dtype)
    # what the official network carries but never uses
    sd["vmunet.layers.3.blocks.0.ln_1.weight"] = torch.ones(64)
    sd["deconv5.weight"] = torch.zeros(8, 8, 4, 4)
    target = VMUNetV2(mid_channels=8, **TINY)
    report = load_official_checkpoint(target, {"model": sd}, strict=True)
    assert report.kind == "vmunet_v2" and sorted(report.ignored) == ["deconv5.weight", "vmunet.layers.3.blocks.0.ln_1.weight"]
    assert torch.equal(target.encoder.patch_embed.proj.weight, sd["vmunet.patch_embed.proj.weight"])


def vmamba_v0_checkpoint(depths=(2, 2, 5, 2)):
    """A VMamba v0 classifier's state dict (same key scheme: patch_embed, layers, norm, head), tiny dims."""
    src = VMUNet(depths=depths, **TINY).state_dict()
    sd = {k: torch.randn_like(v) for k, v in src.items() if k.startswith(("patch_embed.", "layers."))}
    sd.update({"norm.weight": torch.ones(64), "norm.bias": torch.zeros(64), "head.weight": torch.randn(10, 64),
               "head.bias": torch.zeros(10)})
    return {"model": sd}


def test_vmamba_init_of_vmunet_follows_the_paper():
    ckpt = vmamba_v0_checkpoint()
    net = VMUNet(**TINY)
    report = load_official_checkpoint(net, ckpt)
    assert report.kind == "vmamba_v0"
    encoder = [k for k in report.loaded if not k.startswith("layers_up.")]
    decoder = [k for k in report.loaded if k.startswith("layers_up.")]
    assert (len(encoder), len(decoder)) == (117, 91)  # the official load_from's two passes
    assert sorted(report.missing) == sorted(
        [f"layers_up.{i}.upsample.{p}" for i in (1, 2, 3) for p in ("expand.weight", "norm.weight", "norm.bias")]
        + ["final_up.expand.weight", "final_up.norm.weight", "final_up.norm.bias", "final_conv.weight", "final_conv.bias"]
    )
    assert set(report.unexpected) == {k for k in ckpt["model"] if re.match(r"layers\.2\.blocks\.[234]\.|norm\.|head\.", k)}
    # the counts of a partial start explained, in groups: what a classifier has that this network lacks, and back
    (note,) = report.notes
    assert "unused by this network: layers.2.blocks.2-4 (" in note and "norm (2 tensors), head (2 tensors)" in note
    assert note.endswith("left as initialised, having no counterpart in a classifier: layers_up.1.upsample (3 "
                         "tensors), layers_up.2.upsample (3 tensors), layers_up.3.upsample (3 tensors), final_up (3 "
                         "tensors), final_conv (2 tensors)")
    sd = net.state_dict()
    src = ckpt["model"]
    assert torch.equal(sd["layers_up.0.blocks.1.self_attention.A_logs"], src["layers.3.blocks.1.self_attention.A_logs"])
    assert torch.equal(sd["layers_up.3.blocks.0.ln_1.weight"], src["layers.0.blocks.0.ln_1.weight"])
    assert torch.equal(sd["layers.2.downsample.reduction.weight"], src["layers.2.downsample.reduction.weight"])
    with pytest.raises(CheckpointError):
        load_official_checkpoint(VMUNet(**TINY), ckpt, strict=True)


def test_vmamba_init_of_v2_is_encoder_only_and_of_mamba_unet_mirrors_the_decoder():
    ckpt = vmamba_v0_checkpoint(depths=(2, 2, 9, 2))
    v2 = VMUNetV2(mid_channels=8, **TINY)
    report = load_official_checkpoint(v2, ckpt)
    assert report.loaded and all(k.startswith("encoder.") for k in report.loaded)
    assert "encoder.layers.2.blocks.8.ln_1.weight" in report.loaded
    mu = MambaUNet(**TINY)
    report = load_official_checkpoint(mu, ckpt)
    assert "norm.weight" in report.loaded
    assert "layers_up.1.blocks.1.self_attention.Ds" in report.loaded  # from layers.2.blocks.1
    assert not any(k.startswith(("layers_up.0.", "concat_back_dim.", "up.", "output.")) for k in report.loaded)


def test_bad_files_get_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_official_checkpoint(VMUNet(**TINY), tmp_path / "nope.pth")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_official_checkpoint(VMUNet(**TINY), empty)
    good = tmp_path / "good.pth"
    torch.save(vmamba_v0_checkpoint(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated.pth: cannot be read"):
        load_official_checkpoint(VMUNet(**TINY), truncated)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pth"):
        load_official_checkpoint(VMUNet(**TINY), text)


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoints_load_with_weights_only(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "extra": _Payload()}, path)
    with pytest.raises(CheckpointError, match=r"evil.pth: .*pickles Python objects beside the tensors \(print\).*no "
                                              r"code in it runs"):
        load_official_checkpoint(VMUNet(**TINY), path)
    assert "code ran" not in capsys.readouterr().out


def _ours(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return VMUNet(**TINY).state_dict()


@pytest.mark.parametrize("wrap", [
    lambda sd: {"module." + k: v for k, v in sd.items()},  # DataParallel / DDP
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}},
    lambda sd: {"net": sd},
    lambda sd: {"state_dict": {"model." + k: v for k, v in sd.items()}},  # a Lightning module's self.model
    lambda sd: {"_orig_mod." + k: v for k, v in sd.items()},  # torch.compile
    lambda sd: {"module._orig_mod." + k: v for k, v in sd.items()},  # a compiled network in DataParallel
    lambda sd: {**{"module." + k: v for k, v in sd.items()}, "n_averaged": torch.tensor(7)},  # SWA's AveragedModel
    # a Lightning module holding its loss's weights beside the network; a config under "model", tensors elsewhere
    lambda sd: {"state_dict": {**{"model." + k: v for k, v in sd.items()}, "loss_fn.weight": torch.ones(2)}},
    lambda sd: {"model": {"arch": "vmunet", "dims": [8, 16, 32, 64]}, "state_dict": sd},
])
def test_the_usual_containers_and_prefixes_unwrap_to_the_same_weights(wrap, tmp_path):
    from vmunet_monai.weights import check_checkpoint_fits

    sd = _ours(1)
    path = tmp_path / "w.pt"
    torch.save(wrap(sd), path)
    net = VMUNet(**TINY)
    state = check_checkpoint_fits(net, path)
    assert sorted(state) == sorted(sd) and all(torch.equal(state[k], sd[k]) for k in sd)
    report = load_official_checkpoint(torch.nn.DataParallel(net), path, strict=True)
    assert report.ok and all(torch.equal(net.state_dict()[k], sd[k]) for k in sd)


def test_the_official_latest_checkpoint_with_numpy_losses_loads(tmp_path):
    """VM-UNet's train.py saves its losses as numpy.float64 beside the weights of latest.pth."""
    import numpy as np

    ckpt = official_vmunet_checkpoint()
    ckpt.update(min_loss=np.float64(0.25), loss=np.mean(np.array([0.5, 0.25])), min_epoch=12)
    path = tmp_path / "latest.pth"
    torch.save(ckpt, path)
    net = VMUNet()
    assert load_official_checkpoint(net, path, strict=True).ok
    assert torch.equal(net.state_dict()["final_conv.weight"], ckpt["model"]["vmunet.final_conv.weight"])


def test_files_that_are_not_weights_say_what_they_are(tmp_path):
    lfs = tmp_path / "model.pt"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 108000000\n")
    with pytest.raises(CheckpointError, match=r"model.pt: .*a Git LFS pointer .*git lfs pull"):
        load_official_checkpoint(VMUNet(**TINY), lfs)
    notes = tmp_path / "notes.pt"
    notes.write_text("weights are on the shared drive")
    with pytest.raises(CheckpointError, match=r"notes.pt: .*a text file, not a checkpoint \(it starts: 'weights are"):
        load_official_checkpoint(VMUNet(**TINY), notes)
    whole = tmp_path / "whole.pt"
    torch.save(VMUNet(**TINY), whole)
    with pytest.raises(CheckpointError, match=r"whole.pt: .*\(vmunet_monai.networks.vmunet.VMUNet\).*"
                                              r"torch.save\(model.state_dict\(\), path\)") as err:
        load_official_checkpoint(VMUNet(**TINY), whole)
    assert "\x1b" not in str(err.value)  # torch's message carries terminal colour codes
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.trace(torch.nn.Conv2d(1, 1, 1), torch.zeros(1, 1, 2, 2)), str(scripted))
    with pytest.raises(CheckpointError, match=r"scripted.pt: a TorchScript archive .*--model"):
        load_official_checkpoint(VMUNet(**TINY), scripted)
    with pytest.raises(CheckpointError, match=r": a folder, not a checkpoint file"):
        load_official_checkpoint(VMUNet(**TINY), tmp_path)


def test_nothing_loaded_is_an_error_and_another_network_a_warning():
    with pytest.raises(CheckpointError, match="not one tensor fits this VMUNet, so nothing was loaded"):
        load_official_checkpoint(VMUNet(**TINY), {"model.conv1.weight": torch.zeros(64, 3, 7, 7)})
    # two copies of the network (a training module's model and its EMA): nothing is guessed, the prefixes are named
    sd = _ours(2)
    both = {**{"model." + k: v for k, v in sd.items()}, **{"ema_model." + k: v for k, v in sd.items()}}
    with pytest.raises(CheckpointError, match=r"nothing was loaded; its keys start with 'model.' \(222\), "
                                              r"'ema_model.' \(222\): take the network's tensors out"):
        load_official_checkpoint(VMUNet(**TINY), both)
    # the network's names at other shapes (another dims): the settings are named, not a prefix to take out
    wider = VMUNet(**{**TINY, "dims": tuple(2 * d for d in TINY["dims"])}).state_dict()
    with pytest.raises(CheckpointError, match=r"another size; 221 of its tensors have the network's names but "
                                              r"other shapes \(e.g. .*\): it is of a network with other settings"):
        load_official_checkpoint(VMUNet(**TINY), wider)
    # the encoder of our own network is no VMamba classifier: loaded by name, the decoder left as it is
    encoder = {k: v for k, v in sd.items() if k.startswith(("patch_embed.", "layers."))}
    net = VMUNet(**TINY)
    decoder = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("layers_up.")}
    report = load_official_checkpoint(net, encoder)
    assert report.kind != "vmamba_v0" and sorted(report.loaded) == sorted(encoder)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in decoder.items())
    mu = {"mamba_unet." + k: v for k, v in MambaUNet(**TINY).state_dict().items()}
    with pytest.warns(UserWarning, match="a Mamba-UNet checkpoint loaded into a VMUNet: only the layers with equal"):
        report = load_official_checkpoint(VMUNet(**TINY), mu)
    assert report.loaded and "note: a Mamba-UNet checkpoint" in report.summary()
    v2 = {"patch_embed.0.weight": torch.zeros(48, 3, 3, 3), "layers.0.blocks.0.norm.weight": torch.zeros(96),
          "layers.0.blocks.0.op.in_proj.weight": torch.zeros(384, 96)}
    with pytest.raises(CheckpointError, match="VMamba's later releases .*vmamba_small_e238_ema.pth"):
        load_official_checkpoint(VMUNet(**TINY), v2)


def test_a_checkpoint_of_the_same_network_with_other_settings_says_so():
    """A bundle's own model.pt evaluated without the network overrides it was trained with is not 'an official
    checkpoint to convert': the message says the network's settings differ."""
    from vmunet_monai.weights import check_checkpoint_fits

    trained = VMUNet(depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), **TINY).state_dict()
    with pytest.raises(CheckpointError, match=r"it is a VM-UNet of other settings \(depths, dims or d_state\): build "
                                              r"the network with the settings it was trained with") as err:
        check_checkpoint_fits(VMUNet(**TINY), trained)
    assert "official" not in str(err.value) and "so copy that file with them" in str(err.value)


def test_weights_beside_another_trainings_network_json_say_so(tmp_path):
    """predict and export build the network from the network.json beside the weights: weights that do not fit it
    (another file copied into a training's models/) name that file as the likely cause."""
    from vmunet_monai.weights import check_checkpoint_fits

    (tmp_path / "network.json").write_text('{"_target_": "vmunet_monai.networks.VMUNet", "depths": [1, 1, 1, 1]}')
    torch.save(VMUNet(**TINY).state_dict(), tmp_path / "best.pth")
    with pytest.raises(CheckpointError) as err:
        check_checkpoint_fits(VMUNet(depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), **TINY), tmp_path / "best.pth",
                              built_from_record=True)
    message = str(err.value)
    assert message.endswith(f"the network was built with the settings of {tmp_path / 'network.json'} beside the "
                            "weights, so if another training left that file there, these weights are not of it: move "
                            "it away)")
    assert "copy that file with them" not in message


def test_a_bundle_run_given_weights_of_other_settings_is_told_the_recorded_ones(tmp_path):
    """monai.bundle run builds network_def from the configs alone: weights trained with other dims (only shapes
    differ) are named with the overrides their network.json records, not told to move that file away."""
    import json

    from vmunet_monai.weights import check_checkpoint_fits

    small = dict(TINY, dims=[16, 32, 64, 128])
    torch.save(VMUNet(**small).state_dict(), tmp_path / "model.pt")
    (tmp_path / "network.json").write_text(json.dumps({"_target_": "vmunet_monai.networks.VMUNet", **small,
                                                       "_desc_": {"trained_input_size": [64, 64]}}))
    with pytest.raises(CheckpointError) as err:
        check_checkpoint_fits(VMUNet(**TINY), tmp_path / "model.pt")
    message = str(err.value)
    assert "shapes differ" in message and "move it away" not in message
    assert (f"{tmp_path / 'network.json'} beside the weights records the settings they were trained with: give them "
            f"to monai.bundle run as overrides (") in message
    assert "--network_def#dims '[16, 32, 64, 128]'" in message and "--image_size '[64, 64]'" in message


def test_the_ct_bundles_trained_window_is_its_roi_size(tmp_path, capsys):
    """The CT bundle has no image_size: the size its training's slices had is its sliding window, roi_size. predict
    slides a window of that size (the bundle's evaluation with the training's --roi_size scores the same), and
    evaluation and inference name --roi_size where the weights do not fit or the window differs."""
    import json

    from vmunet_monai.engine import WeightsLoader
    from vmunet_monai.predict import trained_network
    from vmunet_monai.weights import check_checkpoint_fits

    configs = pathlib.Path(__file__).parents[1] / "bundles" / "synapse_multiorgan" / "configs"
    small = dict(TINY, dims=[16, 32, 64, 128])
    torch.save(VMUNet(**small).state_dict(), tmp_path / "model.pt")
    (tmp_path / "network.json").write_text(json.dumps({"_target_": "vmunet_monai.networks.VMUNet", **small,
                                                       "_desc_": {"trained_input_size": [64, 64]}}))
    overrides = trained_network([str(configs / "inference.json")], tmp_path / "model.pt")
    assert overrides["roi_size"] == [64, 64] and "image_size" not in overrides
    assert "roi_size [64, 64]" in capsys.readouterr().out  # the note: the bundle's window is 224 x 224
    with pytest.raises(CheckpointError) as err:
        check_checkpoint_fits(VMUNet(**TINY), tmp_path / "model.pt", size_setting="roi_size")
    assert "--roi_size '[64, 64]'" in str(err.value) and "--image_size" not in str(err.value)
    for name in ("evaluate.json", "inference.json"):  # the bundle's loaders say which setting the window is
        text = (configs / name).read_text()
        assert '"image_size": "@roi_size",\n            "size_setting": "roi_size"' in text, name
    loader = WeightsLoader(str(tmp_path / "model.pt"), {"model": VMUNet(**TINY)}, image_size=[224, 224],
                           size_setting="roi_size")
    with pytest.raises(CheckpointError, match=r"--roi_size '\[64, 64\]'"):
        loader(None)


def _official_v2(net: VMUNetV2) -> dict:
    """``net``'s weights under the official VM-UNetV2's names (its encoder under ``vmunet.``), with the tensors the
    official network builds but never uses."""
    sd = {("vmunet." + k[len("encoder."):] if k.startswith("encoder.") else k): torch.randn_like(v.float()).to(v.dtype)
          for k, v in net.state_dict().items()}
    sd["vmunet.layers.3.blocks.0.ln_1.weight"] = torch.ones(64)
    sd["deconv5.weight"] = torch.zeros(8, 8, 4, 4)
    return sd


def test_the_strict_check_of_predict_and_export_takes_an_official_v2_checkpoint(tmp_path):
    """predict, bundle inference, export and package check weights with check_checkpoint_fits: an official VM-UNetV2
    best.pth is read under its own names, whole, as load_official_checkpoint reads it."""
    from vmunet_monai.weights import check_checkpoint_fits

    official = _official_v2(VMUNetV2(mid_channels=8, **TINY))
    path = tmp_path / "best.pth"
    torch.save({"model": official}, path)
    net = VMUNetV2(mid_channels=8, **TINY)
    state = check_checkpoint_fits(net, path)
    net.load_state_dict(state)
    assert torch.equal(net.encoder.patch_embed.proj.weight, official["vmunet.patch_embed.proj.weight"])
    assert "deconv5.weight" not in state and sorted(state) == sorted(net.state_dict())


def test_an_official_v2_trained_without_deep_supervision_fits_a_network_built_without_it(tmp_path):
    """The official VM-UNetV2 builds deconv6 with or without deep supervision, so a best.pth trained without it holds
    deconv6 too: a VMUNetV2(deep_supervision=False) takes the file, whole and strict, leaving deconv6 out with a note
    saying which setting a file trained with deep supervision needs. Our own weights with a trained deconv6 are
    still refused by such a network (dropping it would change the output)."""
    from vmunet_monai.weights import check_checkpoint_fits

    official = _official_v2(VMUNetV2(mid_channels=8, deep_supervision=True, **TINY))
    assert {"deconv6.weight", "deconv6.bias"} <= set(official)
    path = tmp_path / "best.pth"
    torch.save({"model": official}, path)
    net = VMUNetV2(mid_channels=8, deep_supervision=False, **TINY)
    state = check_checkpoint_fits(net, path)
    assert sorted(state) == sorted(net.state_dict()) and not any(k.startswith("deconv6.") for k in state)
    with pytest.warns(UserWarning, match=r"deconv6 left out: this VMUNetV2 is built with deep_supervision=False, .* "
                                         r"need deep_supervision=True"):
        report = load_official_checkpoint(net, path, strict=True)
    assert {"deconv6.weight", "deconv6.bias"} <= set(report.ignored) and report.ok
    assert torch.equal(net.encoder.patch_embed.proj.weight, official["vmunet.patch_embed.proj.weight"])
    ours = VMUNetV2(mid_channels=8, deep_supervision=True, **TINY).state_dict()
    with pytest.raises(CheckpointError, match=r"2 unknown keys \(e.g. deconv6.weight\).*other settings \(depths, dims, "
                                              r"d_state or deep_supervision\)"):
        check_checkpoint_fits(net, ours)


def test_another_network_or_a_vmamba_classifier_is_named_with_where_it_belongs():
    from vmunet_monai.weights import check_checkpoint_fits

    v2 = VMUNetV2(mid_channels=8, **TINY).state_dict()
    with pytest.raises(CheckpointError, match=r"it is a VM-UNetV2 checkpoint: give it to a bundle whose network_def is "
                                              r"VMUNetV2 \(polyp_seg builds it\)") as err:
        check_checkpoint_fits(VMUNet(**TINY), v2)
    assert "convert" not in str(err.value)
    with pytest.raises(CheckpointError, match=r"it is a VM-UNet checkpoint: give it to a bundle whose network_def is "
                                              r"VMUNet \(isic_skin_lesion and synapse_multiorgan build it\)"):
        check_checkpoint_fits(VMUNetV2(mid_channels=8, **TINY), VMUNet(**TINY).state_dict())
    with pytest.raises(CheckpointError, match=r"a VMamba v0 ImageNet encoder, the papers' initialisation for training "
                                              r"\(--pretrained_checkpoint"):
        check_checkpoint_fits(VMUNet(**TINY), vmamba_v0_checkpoint(depths=(2, 2, 9, 2)))


def test_a_partial_load_of_the_same_network_is_said():
    """Official weights of another class count, or with tensors missing, load what fits; the rest keeps its random
    start, and a warning says how much (the report alone went unread)."""
    with pytest.warns(UserWarning, match=r"220 of the network's 222 tensors loaded \(\d+% of its values\); 2 keep their random "
                                         r"initialisation \(of another shape, e.g. final_conv.weight \(1, 24, 1, 1\) in "
                                         r"the file, \(9, 24, 1, 1\) here\)"):
        load_official_checkpoint(VMUNet(out_channels=9), official_vmunet_checkpoint())
    sd = official_vmunet_checkpoint()["model"]
    sd = dict(list(sd.items())[:100])
    with pytest.warns(UserWarning, match=r"100 of the network's 222 tensors loaded \(\d+% of its values\); 122 keep their "
                                         r"random "
                                         r"initialisation \(missing, e.g. "):
        load_official_checkpoint(VMUNet(), sd)
    small = VMUNet(out_channels=2, dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1))
    big = VMUNet(out_channels=2)
    before = big.patch_embed.proj.weight.clone()
    with pytest.raises(CheckpointError, match=r"only 1 of this VMUNet's 222 tensors fit \(final_conv.bias\), 0.00% of "
                                              r"its values, so the network would stay as initialised"):
        load_official_checkpoint(big, small.state_dict())  # a bias that happens to match is not a load
    assert torch.equal(big.patch_embed.proj.weight, before)
    with pytest.raises(CheckpointError, match="strict loading failed"):
        load_official_checkpoint(big, dict(list(official_vmunet_checkpoint()["model"].items())[:100]), strict=True)
    assert torch.equal(big.patch_embed.proj.weight, before)  # a strict load that fails loads nothing


class ExperimentConfig(dict):
    """A training script's config object, pickled beside the weights (as VMamba's releases keep their yacs config)."""


def test_a_checkpoint_that_pickles_its_config_beside_the_weights_is_read(tmp_path, capsys):
    import argparse

    weights = _ours(3)
    config = ExperimentConfig(MODEL={"TYPE": "vssm"}, DATA="imagenet")
    path = tmp_path / "vmamba_like.pth"
    torch.save({"model": weights, "config": config, "args": argparse.Namespace(lr=1e-3), "epoch": 238}, path)
    net = VMUNet(**TINY)
    report = load_official_checkpoint(net, path, strict=True)
    assert report.ok and all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())
    err = capsys.readouterr().err
    assert f"note: {path}: also pickles argparse.Namespace, test_weights.ExperimentConfig (a config or training " \
           f"object), read as plain data with weights_only=True; only its tensors are used" in err


def test_an_exported_network_given_as_weights_is_named(tmp_path):
    from vmunet_monai.weights import read_checkpoint

    program = torch.export.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),))
    torch.export.save(program, str(tmp_path / "model.pt2"))
    with pytest.raises(CheckpointError, match=r"model.pt2: a torch.export program \(an exported network\), not a state "
                                              r"dict: give it to predict as --model"):
        read_checkpoint(tmp_path / "model.pt2")
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07\x12\x07pytorch")
    with pytest.raises(CheckpointError, match=r"model.onnx: an ONNX model \(an exported network\)"):
        read_checkpoint(tmp_path / "model.onnx")


def test_vm_unet_and_vm_unet_v2_encoders_load_into_each_other():
    """The two networks share the VSS encoder under other names: a checkpoint of one starts the other's encoder, with
    the warning that only the layers with equal names and shapes were taken."""
    v1 = VMUNet(depths=(2, 2, 9, 2), **TINY)
    v2 = VMUNetV2(mid_channels=8, **TINY)
    with pytest.warns(UserWarning, match="a VM-UNet checkpoint loaded into a VMUNetV2"):
        report = load_official_checkpoint(v2, v1.state_dict())
    encoder = {k for k in v1.state_dict() if k.startswith(("patch_embed.", "layers."))}
    assert set(report.loaded) == {"encoder." + k for k in encoder if "encoder." + k in v2.state_dict()}
    assert torch.equal(v2.encoder.patch_embed.proj.weight, v1.patch_embed.proj.weight)
    back = VMUNet(depths=(2, 2, 9, 2), **TINY)
    with pytest.warns(UserWarning, match="a VM-UNetV2 checkpoint loaded into a VMUNet"):
        report = load_official_checkpoint(back, _official_v2(v2))
    assert report.loaded and all(k.startswith(("patch_embed.", "layers.")) for k in report.loaded)


def test_network_json_is_read_in_one_place_and_a_bad_one_is_named(tmp_path, capsys, monkeypatch):
    """The trained size, the class count and the overrides all come from one reader of ``network.json``, which
    ``predict`` calls once: a file holding no mapping is named once (predict and export build the bundle's
    network), never a crash."""
    import json

    from vmunet_monai.engine import handlers
    from vmunet_monai.engine.handlers import read_network_settings, trained_input_size, write_network_settings
    from vmunet_monai.predict import trained_network
    from vmunet_monai.weights import _recorded_overrides

    weights = tmp_path / "model.pt"
    assert read_network_settings(weights) is None and trained_input_size(weights) is None
    net = VMUNet(in_channels=3, out_channels=1, depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
    write_network_settings(tmp_path, net, input_size=(64, 48))
    assert read_network_settings(weights)["dims"] == [8, 16, 32, 64] and trained_input_size(weights) == [64, 48]
    assert "--network_def#dims '[8, 16, 32, 64]'" in _recorded_overrides(weights)
    assert "--image_size '[64, 48]'" in _recorded_overrides(weights)
    assert trained_input_size(tmp_path / "none.pt", {"_desc_": {"trained_input_size": [32, 16]}}) == [32, 16]
    reads, real = [], handlers.read_network_settings
    monkeypatch.setattr(handlers, "read_network_settings", lambda *a, **k: reads.append(a) or real(*a, **k))
    config = pathlib.Path(__file__).parents[1] / "bundles" / "isic_skin_lesion" / "configs" / "train.json"
    overrides = trained_network([str(config)], weights)
    assert overrides["image_size"] == [64, 48] and overrides["network_def#dims"] == [8, 16, 32, 64]
    assert len(reads) == 1, reads
    monkeypatch.undo()
    (tmp_path / "network.json").write_text(json.dumps([1, 2]))
    capsys.readouterr()
    assert read_network_settings(weights, quiet=False) is None and _recorded_overrides(weights) == ""
    assert capsys.readouterr().out == (f"note: {tmp_path / 'network.json'} cannot be read (it holds a list, not the "
                                       f"settings of a network); the network is built with the bundle's settings\n")
    (tmp_path / "network.json").write_text("{")
    assert trained_input_size(weights) is None and read_network_settings(weights) is None
    assert capsys.readouterr().out == ""


def test_network_json_names_the_classes_of_the_training_s_datalist(tmp_path):
    """A training on classes of its own (``--num_classes 3`` on a datalist of red and blue) records their names
    beside the weights; predict names the classes from there where the bundle's metadata names another count,
    and from the metadata where it names as many (an ensemble: its first weights)."""
    import json

    from vmunet_monai.engine.handlers import (datalist_class_names, trained_class_names, trained_input_size,
                                              write_network_settings)
    from vmunet_monai.predict import bundle_class_names

    data = tmp_path / "data"
    data.mkdir()
    assert datalist_class_names(None) is None and datalist_class_names(data) is None  # no datalist
    (data / "datalist.json").write_text(json.dumps({"training": [], "meta": {"labels": {"0": "bg", "2": "blue"}}}))
    assert datalist_class_names(data) is None  # class 1 unnamed: no list to index by class number
    (data / "datalist.json").write_text(json.dumps({"training": [], "meta": {"labels": {"2": "blue", "1": "red"}}}))
    names = datalist_class_names(data)
    assert names == ["background", "red", "blue"]
    net = VMUNet(in_channels=3, out_channels=3, depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
    write_network_settings(tmp_path / "run", net, input_size=(32, 48), class_names=names)
    weights = tmp_path / "run" / "model.pt"
    assert trained_class_names(weights, 3) == {1: "red", 2: "blue"} and trained_input_size(weights) == [32, 48]
    assert trained_class_names(weights, 2) == {} and trained_class_names(tmp_path / "none.pt", 3) == {}
    bundle = pathlib.Path(__file__).parents[1] / "bundles" / "polyp_seg"
    assert bundle_class_names(bundle, 3) == {}  # the metadata names two classes; no weights to ask
    assert bundle_class_names(bundle, 3, weights) == {1: "red", 2: "blue"}
    assert bundle_class_names(bundle, 3, [str(weights), "other.pt"]) == {1: "red", 2: "blue"}
    assert bundle_class_names(bundle, 2, weights) == {1: "polyp"}  # the bundle's own count: its metadata's names
    write_network_settings(tmp_path / "baseline", None, class_names=names)  # a network without settings
    assert json.loads((tmp_path / "baseline" / "network.json").read_text()) == {"_desc_": {"class_names": names}}
    assert write_network_settings(tmp_path / "nothing", None) is None


def test_images_are_scaled_as_the_weights_were_trained(tmp_path, caplog):
    """The 2D bundles scale each image from 0 to 255 as the official VM-UNet code does (its checkpoints see their
    own scale); a training records the scale beside its weights, and weights of a training that recorded none
    (before 0.1.17, on 0..1) are predicted on 0..1 and warned about in a bundle run at 255."""
    import json
    import logging

    from monai.bundle import ConfigParser

    from vmunet_monai.engine.handlers import WeightsLoader, trained_intensity_max, write_network_settings
    from vmunet_monai.predict import trained_network

    bundle = pathlib.Path(__file__).parents[1] / "bundles" / "polyp_seg"
    for name in ("train.json", "inference.json"):
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / name))
        parser.update({"bundle_root": str(bundle)})
        place = ("train#deterministic_transforms" if name == "train.json" else "preprocessing#transforms")
        at = next(i for i, t in enumerate(parser.get(place)) if t.get("_target_") == "ScaleIntensityd")
        scale = parser.get_parsed_content(f"{place}#{at}")
        image = scale({"image": torch.tensor([[[3.0, 5.0], [7.0, 11.0]]])})["image"]
        assert (float(image.min()), float(image.max())) == (0.0, 255.0), name
    weights = tmp_path / "model.pt"
    net = VMUNet(in_channels=3, out_channels=1, depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
    torch.save(net.state_dict(), weights)
    assert trained_intensity_max(weights) is None  # no record: weights from elsewhere, the bundle's own scale
    configs = [str(bundle / "configs" / "inference.json")]
    assert "intensity_max" not in trained_network(configs, weights)
    write_network_settings(tmp_path, net, input_size=(32, 32), intensity_max=255)
    assert trained_intensity_max(weights) == 255.0 and trained_network(configs, weights)["intensity_max"] == 255.0
    (tmp_path / "network.json").write_text(json.dumps({"_target_": "vmunet_monai.networks.VMUNet",
                                                       "_desc_": {"trained_input_size": [32, 32]}}))
    assert trained_intensity_max(weights) == 1.0  # an older training's record: it scaled to 0..1
    assert trained_network(configs, weights)["intensity_max"] == 1.0
    loader = WeightsLoader(str(weights), {"model": net}, bundle_root=str(bundle), intensity_max=255)
    with caplog.at_level(logging.WARNING):
        loader(None)
    assert "scales them from 0 to 255: its results are wrong; give --intensity_max 1" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        WeightsLoader(str(weights), {"model": net}, bundle_root=str(bundle), intensity_max=1)(None)
    assert "intensity_max" not in caplog.text


def test_a_partial_initialisation_is_a_warning_in_the_training_log(tmp_path, caplog):
    """--pretrained_checkpoint with another network's checkpoint loads what fits; what was left at its random start
    is a warning of the training's log, not a line among the INFO ones."""
    import logging

    from vmunet_monai.engine import load_pretrained

    small = dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
    path = tmp_path / "v2.pth"
    torch.save(VMUNetV2(in_channels=3, out_channels=1, **small).state_dict(), path)
    with caplog.at_level(logging.INFO):
        load_pretrained(VMUNet(in_channels=3, out_channels=1, depths_decoder=(1, 1, 1, 1), **small), path)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warned and all(r.getMessage().startswith(f"pretrained_checkpoint {path}: ") for r in warned), caplog.text
    assert any("random initialisation" in r.getMessage() for r in warned), caplog.text
    caplog.clear()
    own = tmp_path / "own.pth"
    net = VMUNet(in_channels=3, out_channels=1, depths_decoder=(1, 1, 1, 1), **small)
    torch.save(net.state_dict(), own)
    with caplog.at_level(logging.INFO):
        load_pretrained(VMUNet(in_channels=3, out_channels=1, depths_decoder=(1, 1, 1, 1), **small), own)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text  # all of it fits


def test_weights_of_another_network_of_the_family_are_predicted_with_it(tmp_path, capsys):
    """A training with --network_def#_target_ vmunet_monai.networks.MambaUNet records that network beside its
    weights; predict and export build it from there (they built the bundle's VM-UNet, which the weights do not
    fit), the output layer still from num_classes."""
    import json

    from monai.bundle import ConfigParser

    from vmunet_monai.engine.handlers import write_network_settings
    from vmunet_monai.predict import trained_network

    net = MambaUNet(in_channels=1, out_channels=4, dims=(8, 16, 32, 64), d_state=4)
    write_network_settings(tmp_path, net, input_size=(32, 32))
    assert json.loads((tmp_path / "network.json").read_text())["_target_"] == "vmunet_monai.networks.MambaUNet"
    configs = [str(pathlib.Path(__file__).parents[1] / "bundles" / "synapse_multiorgan" / "configs" / "inference.json")]
    overrides = trained_network(configs, tmp_path / "model.pt")
    assert "note: the network is built as it was trained" in capsys.readouterr().out
    parser = ConfigParser()
    parser.read_config(configs)
    parser.update({**overrides, "num_classes": 4})
    built = parser.get_parsed_content("network_def")
    assert type(built).__name__ == "MambaUNet"
    built.load_state_dict(net.state_dict())  # the trained weights fit it
