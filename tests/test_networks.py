"""Networks: official sizes and key names, any input size, gradients everywhere, tracing, registration."""

import json
import pathlib

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

import vmunet_monai
from vmunet_monai.layers import SS2D, Mixer
from vmunet_monai.networks import MambaUNet, VMUNet, VMUNetV2

DATA = pathlib.Path(__file__).parent / "data"
TINY = dict(dims=(8, 16, 32, 64), d_state=4)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_official_parameter_counts():
    assert n_params(VMUNet(out_channels=1)) == 27_427_561
    assert n_params(VMUNet(out_channels=9)) == 27_427_761
    assert n_params(MambaUNet(out_channels=4)) == 19_121_664
    # official VM-UNetV2 (22,770,934) minus its never-used stage 4 (8,911,872) and deconv5 (36,864)
    assert n_params(VMUNetV2()) == 22_770_934 - 8_911_872 - 36_864


def test_vmunet_state_dict_matches_official_names_and_shapes():
    want = {}
    for line in (DATA / "official_vmunet_state_dict.txt").read_text().splitlines():
        key, shape = line.split(" ", 1)
        want[key[len("vmunet."):]] = tuple(int(s) for s in shape.strip("()").split(",") if s)
    got = {k: tuple(v.shape) for k, v in VMUNet().state_dict().items()}
    assert got == want
    assert list(got) == list(want)  # same order too


def test_drop_path_rates_follow_the_official_schedule():
    m = VMUNet()
    enc = [b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0 for l in m.layers for b in l.blocks]
    dec = [b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0 for l in m.layers_up for b in l.blocks]
    assert enc == pytest.approx(torch.linspace(0, 0.2, 8).tolist())
    assert dec == pytest.approx(torch.linspace(0, 0.2, 7).flip(0).tolist())


@pytest.mark.parametrize("cls,kw", [(VMUNet, {}), (MambaUNet, {}), (VMUNetV2, {"mid_channels": 8})])
@pytest.mark.parametrize("size", [(32, 32), (45, 70), (17, 33)])
@pytest.mark.parametrize("channels", [1, 3])
def test_any_size_and_channels(cls, kw, size, channels):
    net = cls(in_channels=3, out_channels=2, depths=(1, 1, 1, 1), **TINY, **kw).eval()
    with torch.no_grad():
        y = net(torch.randn(1, channels, *size))
    assert y.shape == (1, 2, *size)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("cls,kw", [(VMUNet, {}), (MambaUNet, {}), (VMUNetV2, {"mid_channels": 8})])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_network_cast_to_half_precision_runs_on_the_cpu(cls, kw, dtype):
    """The scan returns float32; a network cast to bf16/fp16 (no autocast) takes it back to its own dtype before
    the output norm, whose weights are of that dtype (on the CPU torch refuses the mix)."""
    torch.manual_seed(0)
    net = cls(in_channels=3, out_channels=2, depths=(1, 1, 1, 1), **TINY, **kw).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        reference = net(x)
        out = net.to(dtype)(x.to(dtype))
    assert out.dtype == dtype
    error = (out.float() - reference).abs().mean() / reference.abs().mean()
    assert error < 0.05, error


def test_padding_does_not_change_interior_for_multiple_of_32():
    net = VMUNet(depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), **TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))


def test_wrong_channel_count_is_a_clear_error():
    net = VMUNet(depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), **TINY)
    with pytest.raises(ValueError, match="3-channel input .* got 4 channels"):
        net(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match=r"\(batch, channels, H, W\)"):
        net(torch.randn(3, 32, 32))
    four = VMUNet(in_channels=4, depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), **TINY)  # 4 MRI modalities
    with pytest.raises(ValueError, match=r"^VMUNet was built for 4-channel input; got 1 channel$"):
        four(torch.randn(1, 1, 32, 32))  # one modality is not repeated into all four
    with pytest.raises(ValueError, match="dims must double"):
        VMUNet(dims=(8, 16, 24, 64))
    with pytest.raises(ValueError, match="2D network"):
        VMUNet(spatial_dims=3)


@pytest.mark.parametrize("cls", [VMUNet, VMUNetV2, MambaUNet])
@pytest.mark.parametrize("kw,message", [
    ({"in_channels": 0}, "{name} in_channels=0 must be at least 1"),
    ({"out_channels": 0}, "{name} out_channels=0 must be at least 1"),
    ({"d_state": 0}, "SS2D d_state=0 must be at least 1"),
    ({"out_channels": 2.5}, "{name} out_channels=2.5 must be a whole number"),
    ({"dims": (2, 4, 8, 16)}, "dims[0]=2 must be at least 4, got (2, 4, 8, 16)"),
    ({"scan_backend": "cuda"}, "scan_backend='cuda' is not a scan backend; choose one of "
                               "['cpu', 'mamba_ssm', 'reference', 'torch', 'triton'], 'auto' or None"),
])
def test_impossible_sizes_and_backends_are_refused_when_built(cls, kw, message):
    """A network that could never run (no channels in or out, no state, a backend that does not exist) is
    refused by its constructor, naming the value, rather than at its first forward."""
    with pytest.raises(ValueError) as exc:
        cls(**kw)
    assert str(exc.value) == message.format(name=cls.__name__)
    assert isinstance(cls(scan_backend="auto", depths=(1, 1, 1, 1), **TINY), torch.nn.Module)  # 'auto' is a choice


@pytest.mark.parametrize("kw,message", [
    ({"dims": (8, 16, 32, 64.5)}, "dims must list 4 stage widths, whole numbers, got (8, 16, 32, 64.5)"),
    ({"dims": 7}, "dims must list 4 stage widths, whole numbers, got 7"),
    ({"dims": "8,16,32,64"}, "dims must list 4 stage widths, whole numbers, got '8,16,32,64'"),
    ({"depths": (1, 1, 1.5, 1)}, "depths must list 4 block counts, whole numbers >= 0, got (1, 1, 1.5, 1)"),
    ({"depths": (1, 1, True, 1)}, "depths must list 4 block counts, whole numbers >= 0, got (1, 1, True, 1)"),
])
def test_widths_and_depths_are_whole_numbers(kw, message):
    """A width of 64.5 was built as 64 without a word, and dims=7 failed in a bare TypeError."""
    with pytest.raises(ValueError) as exc:
        VMUNet(**{"dims": (8, 16, 32, 64), **kw})
    assert str(exc.value) == message
    assert VMUNet(dims=(8.0, 16, 32, 64), depths=(1, 1, 1, 1)).layers[0].blocks[0].ln_1.normalized_shape == (8,)


@pytest.mark.parametrize("cls", [VMUNet, VMUNetV2, MambaUNet])
def test_a_non_strict_load_of_another_networks_weights_is_refused(cls):
    """MONAI Label loads a bundle's model.pt with strict=False: weights of which no tensor is the network's (another
    network's, or under a wrapper's prefix) would leave it at its random start, serving masks of noise. They are
    refused, naming whose they are; a load that fits in part goes on as torch does it."""
    from vmunet_monai.weights import CheckpointError

    net = cls(depths=(1, 1, 1, 1), **TINY)
    # this network's own weights, trained for three classes: named as such (MONAI Label met torch's size mismatch)
    three = cls(depths=(1, 1, 1, 1), out_channels=3, **TINY).state_dict()
    with pytest.raises(CheckpointError, match=rf"^the weights' output layer has 3 classes against 2 in this "
                                              rf"{cls.__name__}: they were trained with --num_classes 3; "
                                              r".* copy_bundle"):
        cls(depths=(1, 1, 1, 1), out_channels=1, **TINY).load_state_dict(three, strict=False)
    others = [c for c in (VMUNet, VMUNetV2, MambaUNet) if c is not cls]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for other in others:
        state = other(depths=(1, 1, 1, 1), **TINY).state_dict()
        if set(state) & set(before):  # VM-UNet and Mamba-UNet share names: torch's shape check refuses them
            with pytest.raises(RuntimeError, match="size mismatch"):
                cls(depths=(1, 1, 1, 1), **TINY).load_state_dict(state, strict=False)
            continue
        with pytest.raises(CheckpointError, match=rf"^none of the {len(state)} tensors given \(e.g. '.*'\) is one of "
                                                  rf"this {cls.__name__}'s \(e.g. '.*'\), so a load with strict=False "
                                                  rf"\(as MONAI Label loads a bundle's model.pt\) would leave the "
                                                  rf"network at its random start; it is a .* checkpoint: give it to"):
            net.load_state_dict(state, strict=False)
    wrapped = {"module." + k: v for k, v in before.items()}
    with pytest.raises(CheckpointError, match=r"its keys carry the prefix 'module.' \(of a wrapper"):
        net.load_state_dict(wrapped, strict=False)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # nothing was loaded
    part = {k: torch.zeros_like(v) for k, v in before.items() if "patch_embed." in k}
    assert part
    result = net.load_state_dict(part, strict=False)
    assert result.unexpected_keys == [] and set(result.missing_keys) == {
        k for k in before if k not in part and not k.endswith("num_batches_tracked")}
    assert all(torch.equal(net.state_dict()[k], part[k]) for k in part)
    assert net.load_state_dict({}, strict=False).missing_keys  # nothing given, nothing refused


@pytest.mark.parametrize("cls,kw", [(VMUNet, {"depths_decoder": (1, 1, 1, 1)}), (MambaUNet, {}),
                                    (VMUNetV2, {"mid_channels": 8})])
def test_every_parameter_gets_a_gradient(cls, kw):
    net = cls(out_channels=2, depths=(1, 1, 1, 1), **TINY, **kw).train()
    out = net(torch.randn(2, 3, 64, 64))
    outs = out if isinstance(out, list) else [out]
    sum(o.square().mean() for o in outs).backward()
    assert [n for n, p in net.named_parameters() if p.grad is None] == []


def test_vmunet_v2_deep_supervision_with_monai_loss():
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    net = VMUNetV2(out_channels=1, depths=(1, 1, 1, 1), mid_channels=8, **TINY).train()
    heads = net(torch.randn(2, 3, 64, 64))
    assert isinstance(heads, list) and [h.shape[-1] for h in heads] == [64, 32, 16, 8]
    target = (torch.rand(2, 1, 64, 64) > 0.5).float()
    loss = DeepSupervisionLoss(DiceCELoss(sigmoid=True))(heads, target)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in net.seg_outs.parameters())
    net.eval()
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    flat = VMUNetV2(deep_supervision=False, depths=(1, 1, 1, 1), mid_channels=8, **TINY).train()
    assert isinstance(flat(torch.randn(2, 3, 64, 64)), torch.Tensor)
    # training mode without gradients (dropout sampling, as MONAI Label's epistemic scoring runs it): one tensor
    net.train()
    with torch.no_grad():
        sampled = net(torch.randn(2, 3, 64, 64))
    assert isinstance(sampled, torch.Tensor) and sampled.shape == (2, 1, 64, 64)


@pytest.mark.parametrize("cls,kw", [(VMUNet, {"depths_decoder": (1, 1, 1, 1)}), (MambaUNet, {}),
                                    (VMUNetV2, {"mid_channels": 8, "deep_supervision": False})])
def test_dropout_on_the_ss2d_outputs_samples_in_training_mode_only(cls, kw):
    """``dropout`` (the official attn_drop_rate, MONAI Label's epistemic_dropout): an ``nn.Dropout`` after every
    SS2D, none at 0; the same state dict either way, so trained weights load into a network with dropout."""
    plain = cls(out_channels=2, depths=(1, 1, 1, 1), **TINY, **kw)
    assert not any(isinstance(m, torch.nn.Dropout) for m in plain.modules())
    torch.manual_seed(0)
    net = cls(out_channels=2, depths=(1, 1, 1, 1), dropout=0.3, **TINY, **kw)
    mixers = [m for m in net.modules() if isinstance(m, SS2D)]
    assert mixers and all(isinstance(m.dropout, torch.nn.Dropout) and m.dropout.p == 0.3 for m in mixers)
    assert net.state_dict().keys() == plain.state_dict().keys()
    net.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        net.eval()
        assert torch.equal(net(x), net(x)) and torch.allclose(net(x), plain.eval()(x), atol=1e-5)
        net.train()
        first, second = net(x), net(x)
    assert not torch.allclose(first, second)  # a new dropout mask per pass
    for bad in (-0.1, 1.0, "0.2", True):
        with pytest.raises(ValueError, match=rf"{cls.__name__} dropout={bad!r}: a rate from 0 up to but not including 1"):
            cls(dropout=bad, depths=(1, 1, 1, 1), **TINY, **kw)


@pytest.mark.parametrize("cls,kw", [(VMUNet, {"depths_decoder": (1, 1, 1, 1)}), (MambaUNet, {}),
                                    (VMUNetV2, {"mid_channels": 8})])
def test_trace_on_torch_backend_equals_eager(cls, kw):
    net = cls(out_channels=2, depths=(1, 1, 1, 1), scan_backend="torch", **TINY, **kw).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(net, x, check_trace=False)
        x2 = torch.randn(1, 3, 64, 64)
        assert torch.allclose(traced(x2), net(x2), atol=1e-5)


def test_tracing_runs_the_torch_backend_whatever_was_chosen(monkeypatch):
    """A network built with another backend, or $VMUNET_SCAN_BACKEND set, still traces through the pure-PyTorch
    scan: the reference loop would be unrolled step by step into the graph, and a compiled kernel is no graph."""
    from vmunet_monai.ops import resolve_backend

    seen = []
    monkeypatch.setenv("VMUNET_SCAN_BACKEND", "reference")
    assert resolve_backend("cpu") == "reference"
    net = VMUNet(out_channels=2, depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), scan_backend="reference",
                 **TINY).eval()

    def probe(module, args):
        seen.append(resolve_backend("cpu", "reference"))

    net.register_forward_pre_hook(probe)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(net, x, check_trace=False)
        x2 = torch.randn(1, 3, 64, 64)
        assert torch.allclose(traced(x2), net(x2), atol=1e-5)
    assert seen[0] == "torch" and seen[-1] == "reference"  # traced on torch; eager again on the choice
    assert len(traced.graph.findAllNodes("prim::Loop")) == 0


def test_registration_and_dotted_targets():
    assert Mixer["ss2d", 2] is SS2D
    parser = ConfigParser({
        "imports": ["$import vmunet_monai"],
        "net": {"_target_": "vmunet_monai.networks.VMUNet", "in_channels": 1, "out_channels": 9,
                "dims": [8, 16, 32, 64], "d_state": 4, "depths": [1, 1, 1, 1], "depths_decoder": [1, 1, 1, 1]},
    })
    net = parser.get_parsed_content("net")
    assert isinstance(net, vmunet_monai.VMUNet) and net.out_channels == 9


def test_custom_mixer_through_the_factory():
    class Identity2D(torch.nn.Module):
        def __init__(self, d_model, d_state=16, **_):
            super().__init__()
            self.proj = torch.nn.Linear(d_model, d_model)

        def forward(self, x):
            return self.proj(x)

    Mixer.add_factory_callable("test_identity_mixer", lambda spatial_dims=2: Identity2D)
    net = VMUNet(depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), mixer="test_identity_mixer", **TINY)
    assert not any(isinstance(m, SS2D) for m in net.modules())
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 1, 32, 32)


@pytest.mark.parametrize("cls", [VMUNet, VMUNetV2, MambaUNet])
@pytest.mark.parametrize("array", [np.array, torch.tensor])
def test_array_and_tensor_arguments_are_recorded_as_plain_json(cls, array):
    """dims and depths given as a NumPy array or a tensor build the network, and its recorded settings hold
    plain lists of Python ints (a NumPy number becomes a Python number), so they go through JSON and rebuild
    the same network."""
    net = cls(dims=array([8, 16, 32, 64]), depths=array([1, 1, 1, 1]), d_state=np.int64(4))
    settings = net.settings
    assert settings["dims"] == [8, 16, 32, 64] and settings["depths"] == [1, 1, 1, 1]
    assert all(type(v) is int for v in settings["dims"] + settings["depths"]) and type(settings["d_state"]) is int
    assert json.loads(json.dumps(settings)) == settings
    rebuilt = cls(**{k: v for k, v in settings.items() if k != "_target_"})
    assert rebuilt.state_dict().keys() == net.state_dict().keys()


@pytest.mark.parametrize("cls", [VMUNet, VMUNetV2, MambaUNet])
@pytest.mark.parametrize("kw,message", [
    ({"drop_path_rate": -0.1}, "{name} drop_path_rate=-0.1: a rate from 0 up to but not including 1"),
    ({"drop_path_rate": 1.5}, "{name} drop_path_rate=1.5: a rate from 0 up to but not including 1"),
    ({"drop_path_rate": "0.2"}, "{name} drop_path_rate='0.2': a rate from 0 up to but not including 1"),
    ({"mixer": "foo"}, "{name}: mixer 'foo' is not a registered token mixer (registered: 'ss2d'"),
    ({"recompute": "no"}, "{name} recompute='no' must be True or False"),
    ({"recompute": 1}, "{name} recompute=1 must be True or False"),
])
def test_network_arguments_are_refused_by_name(cls, kw, message):
    """Out-of-range rates, an unregistered mixer and a recompute that is not a bool are refused by the
    constructor with one ValueError naming the class, the argument, its value and the rule."""
    with pytest.raises(ValueError) as exc:
        cls(depths=(1, 1, 1, 1), **TINY, **kw)
    assert str(exc.value).startswith(message.format(name=cls.__name__))


@pytest.mark.parametrize("kw,message", [
    ({"mid_channels": 0}, "VMUNetV2 mid_channels=0 must be at least 1"),
    ({"mid_channels": 2.5}, "VMUNetV2 mid_channels=2.5 must be a whole number"),
    ({"deep_supervision": "no"}, "VMUNetV2 deep_supervision='no' must be True or False"),
    ({"deep_supervision": None}, "VMUNetV2 deep_supervision=None must be True or False"),
])
def test_vmunet_v2_neck_arguments_are_refused_by_name(kw, message):
    with pytest.raises(ValueError) as exc:
        VMUNetV2(depths=(1, 1, 1, 1), **TINY, **kw)
    assert str(exc.value) == message


def test_numpy_bools_are_taken_as_bools():
    net = VMUNetV2(depths=(1, 1, 1, 1), mid_channels=8, deep_supervision=np.bool_(False), recompute=np.bool_(False),
                   **TINY)
    assert net.deep_supervision is False and not hasattr(net, "deconv6")
    assert all(m.recompute is False for m in net.modules() if isinstance(m, SS2D))
    assert net.settings["deep_supervision"] is False and json.dumps(net.settings)


def test_custom_mixer_gets_only_the_arguments_it_takes():
    """A registered mixer whose constructor takes (d_model, d_state) only is built without scan_backend and
    recompute; one with **kwargs gets them."""
    seen = {}

    class LinMix(torch.nn.Module):
        def __init__(self, d_model, d_state=16):
            super().__init__()
            self.proj = torch.nn.Linear(d_model, d_model)
            seen.setdefault("linmix", []).append(d_state)

        def forward(self, x):
            return self.proj(x)

    class AnyMix(LinMix):
        def __init__(self, d_model, **kwargs):
            super().__init__(d_model)
            seen["anymix"] = kwargs

    Mixer.add_factory_callable("test_linmix", lambda spatial_dims=2: LinMix)
    Mixer.add_factory_callable("test_anymix", lambda spatial_dims=2: AnyMix)
    try:
        net = VMUNet(depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), mixer="test_linmix", **TINY).eval()
        assert not any(isinstance(m, SS2D) for m in net.modules())
        assert seen["linmix"] == [4] * 8  # d_state reaches it; 4 encoder and 4 decoder blocks
        with torch.no_grad():
            y = net(torch.randn(1, 3, 32, 32))
        assert y.shape == (1, 1, 32, 32) and torch.isfinite(y).all()
        MambaUNet(depths=(1, 1, 1, 1), mixer="test_anymix", scan_backend="torch", recompute=False, **TINY)
        assert seen["anymix"] == {"d_state": 4, "scan_backend": "torch", "recompute": False}
    finally:
        Mixer.components.pop("TEST_LINMIX", None)
        Mixer.components.pop("TEST_ANYMIX", None)
    with pytest.raises(ValueError, match="^VMUNet: mixer 'test_linmix' is not a registered token mixer"):
        VMUNet(depths=(1, 1, 1, 1), mixer="test_linmix", **TINY)


@pytest.mark.parametrize("cls", [VMUNet, VMUNetV2, MambaUNet])
def test_scripting_says_the_networks_export_by_tracing(cls):
    """MONAI's ckpt_export without --use_trace scripts the network; the answer names the option, not a lambda deep
    inside a block that the compiler cannot read."""
    with pytest.raises(TypeError, match=rf"^{cls.__name__} exports by tracing, not by torch.jit.script: give MONAI's "
                                        r"ckpt_export --use_trace True"):
        torch.jit.script(cls(dims=[8, 16, 32, 64], depths=[1, 1, 1, 1]))
