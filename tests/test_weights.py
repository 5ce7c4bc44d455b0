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
    report = load_official_checkpoint(VMUNet(**TINY), foreign)
    assert report.kind == "unknown" and sorted(report.unexpected) == ["conv1.weight", "fc.weight"] and not report.loaded


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


def test_checkpoints_load_with_weights_only(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "extra": _Payload()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_official_checkpoint(VMUNet(**TINY), path)
