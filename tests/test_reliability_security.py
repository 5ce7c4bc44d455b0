"""Checkpoints cannot run code: every loader reads them with ``weights_only=True`` (a pickled payload is
refused and never executed), and the docs say plainly that bundle configs execute code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from bundle_helpers import REPO, copy_bundle, make_prepared, tiny_overrides, workflow
from reliability_helpers import tiny_bundle_with_weights, write_ct_volume, write_rgb

from vmunet_monai.weights import CheckpointError


class _Payload:
    """Pickles as a call to ``open(marker, "w")``: loading it with full pickle would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def malicious(tmp_path):
    """A checkpoint whose "model" entry runs code when unpickled, and the file that code would create."""
    marker = tmp_path / "code_ran"
    path = tmp_path / "malicious.pt"
    torch.save({"model": _Payload(marker), "final_conv.weight": torch.zeros(1)}, path)
    assert not marker.exists()
    return path, marker


def _cause_chain(exc: BaseException) -> str:
    text = []
    while exc is not None:
        text.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(text)


def test_package_loaders_refuse_pickled_code(malicious, tmp_path):
    from vmunet_monai.engine import load_pretrained
    from vmunet_monai.networks import VMUNet
    from vmunet_monai.predict import predict
    from vmunet_monai.predict_volume import predict_volumes
    from vmunet_monai.weights import read_checkpoint

    path, marker = malicious
    with pytest.raises(CheckpointError, match=r"pickles Python objects beside the tensors .*no code in it runs"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError):
        load_pretrained(VMUNet(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), d_state=4),
                        path)
    lesion = tiny_bundle_with_weights("isic_skin_lesion", tmp_path / "b2d")
    write_rgb(tmp_path / "in" / "a.png")
    with pytest.raises(CheckpointError, match="malicious.pt"):
        predict(str(lesion), str(tmp_path / "in"), str(tmp_path / "out"), checkpoint=str(path), device="cpu")
    ct = tiny_bundle_with_weights("synapse_multiorgan", tmp_path / "b3d")
    write_ct_volume(tmp_path / "scans" / "ct.nii.gz")
    with pytest.raises(CheckpointError, match="malicious.pt"):
        predict_volumes(str(tmp_path / "scans"), str(tmp_path / "segs"), checkpoint=str(path), device="cpu",
                        bundle_root=str(ct))
    assert not marker.exists()


def test_resume_and_monai_checkpoint_loader_refuse_pickled_code(malicious, tmp_path):
    """The bundle's own paths: --resume_checkpoint, and MONAI's CheckpointLoader in inference.json."""
    from monai.bundle import ConfigWorkflow

    path, marker = malicious
    prepared = make_prepared("isic_skin_lesion", tmp_path / "data", num=4)
    root = copy_bundle("isic_skin_lesion", tmp_path)
    wf = workflow("isic_skin_lesion", ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared),
                  resume_checkpoint=str(path), **tiny_overrides("isic_skin_lesion"))
    wf.initialize()
    with pytest.raises(CheckpointError, match="cannot be read as a checkpoint"):
        wf.parser.get_parsed_content("train#trainer").run()
    wf.finalize()

    lesion = tiny_bundle_with_weights("isic_skin_lesion", tmp_path / "b2d")
    write_rgb(tmp_path / "in" / "a.png")
    infer = ConfigWorkflow(config_file=str(lesion / "configs" / "inference.json"), workflow_type="infer",
                           meta_file=str(lesion / "configs" / "metadata.json"), bundle_root=str(lesion),
                           input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"),
                           checkpoint=str(path), num_workers=0, device="$torch.device('cpu')")
    infer.initialize()
    with pytest.raises(Exception) as failure:
        infer.run()
    assert "weights_only" in _cause_chain(failure.value) or "Unpickl" in _cause_chain(failure.value)
    assert not marker.exists()


def _torch_load_calls(root: Path):
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                owner = node.func.value
                if isinstance(owner, ast.Name) and owner.id in ("torch", "np", "numpy"):
                    yield path, node, owner.id


def test_every_load_in_the_package_is_weights_only():
    """A static check, so that a new torch.load without weights_only=True (or np.load with pickles) fails CI."""
    found = 0
    for root in (REPO / "vmunet_monai", REPO / "scripts"):
        for path, node, module in _torch_load_calls(root):
            keywords = {k.arg: k.value for k in node.keywords}
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            if module == "torch":
                found += 1
                value = keywords.get("weights_only")
                assert isinstance(value, ast.Constant) and value.value is True, \
                    f"{where}: torch.load without weights_only=True"
            else:
                value = keywords.get("allow_pickle")
                assert value is None or (isinstance(value, ast.Constant) and value.value is False), \
                    f"{where}: np.load with allow_pickle"
    assert found >= 3  # weights.py, the resume handler, and the export/package checks


def test_docs_say_configs_execute_code():
    for doc in [REPO / "README.md"] + sorted((REPO / "bundles").glob("*/docs/README.md")):
        raw = doc.read_text(encoding="utf-8")
        text = " ".join(raw.split())
        assert "## Security" in raw, doc
        assert "configs execute code" in text and "sources you trust" in text, doc
        assert "weights_only=True" in text, doc
