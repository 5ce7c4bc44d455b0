"""Model-zoo packaging: metadata schema, offline zoo checks, the zip (layout, weights and their hash), and the
unpacked bundle working with MONAI (check_properties, monai.bundle.load, download_large_files)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import zipfile

import pytest
import torch
import yaml
from bundle_helpers import bundle_dir, run_env
from tiny_bundles import BUNDLE_NAMES, make_tiny_bundle, save_weights, write_ct_volume, write_rgb_image

from vmunet_monai.cli import Commands
from vmunet_monai.package import (
    SCHEMA_FILE,
    BundleCheckError,
    UnsafeArchiveError,
    check_bundle_name,
    check_properties_static,
    package,
    read_state_dict,
    safe_extract,
    validate_metadata,
)


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_repository_bundles_pass_the_static_zoo_checks(name):
    root = bundle_dir(name)
    assert validate_metadata(root / "configs" / "metadata.json") == []
    assert check_properties_static(root) == []
    assert check_bundle_name(name) == []
    for required in ("LICENSE", "configs/metadata.json", "configs/inference.json", "docs/README.md", "large_files.yml"):
        assert (root / required).is_file(), required


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_monai_verify_metadata_accepts_the_bundles_with_the_local_schema(name, tmp_path):
    """The zoo's command, offline: verify_metadata skips the download when the schema file is already there."""
    from monai.bundle import verify_metadata

    schema = tmp_path / "schema.json"
    schema.write_bytes(SCHEMA_FILE.read_bytes())
    verify_metadata(meta_file=str(bundle_dir(name) / "configs" / "metadata.json"), filepath=str(schema))


def test_metadata_problems_name_the_file_the_field_and_the_rule(tmp_path):
    meta = json.loads((bundle_dir("isic_skin_lesion") / "configs" / "metadata.json").read_text())
    del meta["copyright"]
    meta["version"] = "0.2"
    meta["numpy_version"] = "2.4.6"
    meta["network_data_format"]["outputs"]["pred"]["num_channels"] = 0
    del meta["network_data_format"]["inputs"]["image"]["modality"]
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(meta))
    problems = "\n".join(validate_metadata(path))
    assert f"{path}: (top level): 'copyright' is a required property" in problems
    assert "version: '0.2' does not match" in problems
    assert "version '0.2' has no changelog entry" in problems
    assert "numpy_version '2.4.6' does not install on Python 3.10" in problems
    assert "network_data_format/outputs/pred/num_channels: 0 is less than the minimum of 1" in problems
    assert "network_data_format/inputs/image: 'modality' is a required property" in problems
    path.write_text("{not json")
    assert "not valid JSON" in validate_metadata(path)[0]
    assert check_bundle_name("ISIC_v2") == [
        "bundle name 'ISIC_v2': use lowercase snake_case (letters, digits, underscores)",
        "bundle name 'ISIC_v2': no '_v<digit>' inside the name (release keys are <name>_v<version>)",
    ]


def test_package_notes_what_the_zip_alone_does_not_settle():
    from vmunet_monai.package import release_notes

    meta = json.loads((bundle_dir("isic_skin_lesion") / "configs" / "metadata.json").read_text())
    pinned = meta["required_packages_version"]["vmunet-monai"]
    notes = release_notes(meta, "")
    assert "large_files.yml has no url" in notes[0] and f"vmunet-monai=={pinned}" in notes[1]
    assert [n for n in release_notes(meta, "https://example.org/model.pt") if "url" in n] == []


def test_channel_def_must_name_every_label_value(tmp_path):
    """A bundle retrained for three classes whose channel_def still names two: MONAI Label left class 2 unnamed."""
    meta = json.loads((bundle_dir("isic_skin_lesion") / "configs" / "metadata.json").read_text())
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(meta))
    assert validate_metadata(path) == []  # one sigmoid channel: 0 background, 1 lesion
    meta["network_data_format"]["outputs"]["pred"]["num_channels"] = 3
    path.write_text(json.dumps(meta))
    assert validate_metadata(path) == [
        f"{path}: network_data_format/outputs/pred/channel_def names the values ['0', '1'], but a pred of 3 channel(s) "
        "writes 0, 1, 2 (one entry per label value, 0 the background: MONAI Label names its labels from it, and leaves "
        "the others unnamed)"]


def test_static_property_check_finds_a_wrong_reference(tmp_path):
    root = make_tiny_bundle("isic_skin_lesion", tmp_path)
    config = json.loads((root / "configs" / "inference.json").read_text())
    config["evaluator"]["postprocessing"] = "@other_postprocessing"
    config["other_postprocessing"] = config["postprocessing"]
    del config["inferer"]
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=4))
    problems = "\n".join(check_properties_static(root))
    assert "required property 'inferer' (id 'inferer') is missing" in problems
    assert "optional property 'postprocessing' is referenced, but not as '@postprocessing'" in problems


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """Each tiny bundle packaged with trained-like weights saved as a CheckpointSaver dict, then unpacked."""
    root = tmp_path_factory.mktemp("package")
    out = {}
    for name in BUNDLE_NAMES:
        src = make_tiny_bundle(name, root / "src")
        weights = save_weights(src, seed=2)
        nested = root / f"{name}_checkpoint.pt"  # what a training run's checkpoint looks like
        torch.save({"model": torch.load(weights, weights_only=True), "epoch": torch.tensor(3)}, nested)
        (src / "eval").mkdir()
        (src / "eval" / "junk.txt").write_text("run output, not part of a release")
        result = package(str(src), root / "zips", checkpoint=str(nested), url="https://example.org/model.pt")
        folder = safe_extract(result.zip_path, root / "unpacked" / name)
        out[name] = {"src": src, "result": result, "folder": folder, "weights": weights}
    return out


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_zip_layout_weights_and_hash(name, packaged):
    p = packaged[name]
    result, folder = p["result"], p["folder"]
    meta = json.loads((p["src"] / "configs" / "metadata.json").read_text())
    assert result.zip_path.name == f"{name}_v{meta['version']}.zip" and folder.name == name
    with zipfile.ZipFile(result.zip_path) as archive:
        names = archive.namelist()
    assert all(n.startswith(f"{name}/") for n in names)
    assert f"{name}/configs/inference.json" in names and f"{name}/LICENSE" in names
    assert [n for n in names if "/models/" in n] == [f"{name}/models/model.pt"]
    assert not any("/eval/" in n for n in names)
    model = folder / "models" / "model.pt"
    expected = torch.load(p["weights"], weights_only=True)
    got = torch.load(model, weights_only=True)  # flat: the CheckpointSaver dict was reduced to its model
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    entry = yaml.safe_load((folder / "large_files.yml").read_text())["large_files"][0]
    assert entry["path"] == "models/model.pt" and entry["hash_type"] == "sha256"
    assert entry["hash_val"] == hashlib.sha256(model.read_bytes()).hexdigest() == result.model_sha256
    assert entry["url"] == "https://example.org/model.pt"
    assert len(result.checks) == 6 and "TorchScript export" in result.checks[-1]


def _probe_input(name, folder):
    """An input for the infer workflow: a folder with one image (2D bundles) or one CT volume."""
    if name == "synapse_multiorgan":
        write_ct_volume(folder / "ct0.nii.gz")
        return {"dataset_dir": str(folder)}
    write_rgb_image(folder / "img0.png")
    return {"input_dir": str(folder)}


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_unpacked_bundle_passes_check_properties_runs_and_loads(name, packaged, tmp_path):
    from monai.bundle import ConfigWorkflow, load

    folder = packaged[name]["folder"]
    overrides = _probe_input(name, tmp_path / "input")
    workflow = ConfigWorkflow(
        config_file=str(folder / "configs" / "inference.json"), meta_file=str(folder / "configs" / "metadata.json"),
        logging_file=str(folder / "configs" / "logging.conf"), workflow_type="infer", bundle_root=str(folder),
        output_dir=str(tmp_path / "out"), device="$torch.device('cpu')", num_workers=0, **overrides,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()  # loads models/model.pt through the bundle's CheckpointLoader and writes a prediction
    workflow.finalize()
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert written, "the packaged bundle's inference wrote nothing"

    net = load(name, bundle_dir=str(folder.parent), workflow_type="inference", device="cpu")
    expected = torch.load(packaged[name]["weights"], weights_only=True)
    assert all(torch.equal(net.state_dict()[k], expected[k]) for k in expected)


def test_download_large_files_checks_the_packaged_hash(packaged):
    folder = packaged["isic_skin_lesion"]["folder"]
    ok = subprocess.run([sys.executable, "-m", "monai.bundle", "download_large_files", "--bundle_path", str(folder)],
                        env=run_env(), capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
    assert ok.returncode == 0, ok.stderr[-3000:]
    with open(folder / "models" / "model.pt", "ab") as f:  # a corrupted download must be noticed
        f.write(b"\0")
    bad = subprocess.run([sys.executable, "-m", "monai.bundle", "download_large_files", "--bundle_path", str(folder)],
                         env=run_env(), capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
    assert bad.returncode != 0 and "check of existing file failed" in bad.stdout + bad.stderr


def test_package_refuses_weights_of_another_network(tmp_path):
    src = make_tiny_bundle("isic_skin_lesion", tmp_path / "a")
    other = save_weights(make_tiny_bundle("synapse_multiorgan", tmp_path / "b"))
    with pytest.raises(BundleCheckError, match="does not fit network_def .* with strict=True"):
        package(str(src), tmp_path / "zips", checkpoint=str(other), export=False)
    assert not (tmp_path / "zips").exists() or not any((tmp_path / "zips").iterdir())
    # a VM-UNetV2's weights for a VMUNet: none of its tensors is one of the network's, and the refusal says whose
    # they are, as export's does
    v2 = save_weights(make_tiny_bundle("polyp_seg", tmp_path / "c"))
    with pytest.raises(BundleCheckError, match=r"polyp_seg/models/model.pt: does not fit network_def .* with "
                                               r"strict=True: none of its \d+ tensors is one of the network's \(e.g. "
                                               r".*\) \(it is a VM-UNetV2 checkpoint: give it to a bundle whose "
                                               r"network_def is VMUNetV2"):
        package(str(src), tmp_path / "zips", checkpoint=str(v2), export=False)
    not_weights = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_weights)
    with pytest.raises(BundleCheckError, match="not a state dict"):
        read_state_dict(not_weights)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(BundleCheckError, match=r"bundle .*/a/isic_skin_lesion is not ready .*\n  - .*empty.pt: the file "
                                               r"is empty"):
        package(str(src), tmp_path / "zips", checkpoint=str(empty), export=False)


def test_package_names_what_to_change_for_weights_of_more_classes(tmp_path):
    """Weights of a --num_classes 3 training: the refusal names num_classes and metadata.json's output; a bundle whose
    configs say 3 classes but whose metadata.json still says 1 channel is told that metadata must follow."""
    from monai.bundle import ConfigParser

    src = make_tiny_bundle("isic_skin_lesion", tmp_path / "a")
    parser = ConfigParser()
    parser.read_config(str(src / "configs" / "inference.json"))
    parser["num_classes"] = 3
    three = tmp_path / "three.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), three)
    with pytest.raises(BundleCheckError, match=r"its output layer has 3 classes against 2 in the configs: set "
                                               r"num_classes 3 in configs/train.json and configs/inference.json, and "
                                               r"the output's num_channels and channel_def in configs/metadata.json, "
                                               r"or let python -m vmunet_monai copy_bundle write a copy"):
        package(str(src), tmp_path / "zips", checkpoint=str(three), export=False)
    for name in ("train.json", "inference.json"):
        config = json.loads((src / "configs" / name).read_text())
        config["num_classes"] = 3
        (src / "configs" / name).write_text(json.dumps(config, indent=4) + "\n")
    with pytest.raises(BundleCheckError, match=r"verify_net_in_out on network_def: .* \(configs/metadata.json's "
                                               r"network_data_format must match the configs"):
        package(str(src), tmp_path / "zips", checkpoint=str(three), export=False)


def test_package_writes_outside_the_bundle_and_takes_an_upper_case_zip_name(tmp_path):
    """A zip written inside the bundle would be packed into every later release."""
    from vmunet_monai.validation import InputError

    src = make_tiny_bundle("isic_skin_lesion", tmp_path / "a")
    save_weights(src)
    for out in (src / "dist", src, src / "dist" / "release.zip"):
        with pytest.raises(InputError, match=r"is (inside )?the input folder"):
            package(str(src), out, export=False)
    result = package(str(src), tmp_path / "REL.ZIP", export=False)
    assert result.zip_path == tmp_path / "REL.ZIP" and zipfile.is_zipfile(result.zip_path)
    assert not any("replaced" in n for n in result.notes)
    again = package(str(src), tmp_path / "REL.ZIP", export=False, url="https://example.org/v1/model.pt")
    assert again.notes[0] == f"{tmp_path / 'REL.ZIP'} held an earlier package, now replaced"
    for url in ("not a url", "ftp://example.org/model.pt", "https://"):
        with pytest.raises(InputError, match=r"--url .*: not an http\(s\):// or file:// address of the weights"):
            package(str(src), tmp_path / "bad.zip", export=False, url=url)
    assert not (tmp_path / "bad.zip").exists()


def test_package_refuses_an_output_under_a_file_before_its_checks(tmp_path, monkeypatch):
    """OUT under a file is refused at once, not after the checks' minute; a bundle path that is not there is named
    once; weights trained at another size than metadata.json's spatial_shape get a note."""
    import vmunet_monai.package as packaging
    from vmunet_monai.engine.handlers import write_network_settings
    from vmunet_monai.engine.utils import find_bundle

    src = make_tiny_bundle("isic_skin_lesion", tmp_path / "a")
    weights = save_weights(src)
    (tmp_path / "afile.txt").write_text("x")
    with monkeypatch.context() as patch:
        patch.setattr(packaging, "check_bundle", lambda *a, **k: pytest.fail("checked before the output"))
        for out in (tmp_path / "afile.txt", tmp_path / "afile.txt" / "sub" / "r.zip"):
            with pytest.raises(NotADirectoryError) as refused:
                package(str(src), out, export=False)
            assert refused.value.filename == str(out if out.suffix != ".zip" else out.parent)
    assert (tmp_path / "afile.txt").read_text() == "x"
    with pytest.raises(FileNotFoundError) as missing:
        find_bundle(str(tmp_path / "nope"))
    assert f"(searched {tmp_path / 'nope'}); pass a bundle folder" in str(missing.value)
    size = list(json.loads((src / "configs" / "metadata.json").read_text())["network_data_format"]["inputs"]["image"][
        "spatial_shape"])
    write_network_settings(weights.parent, None, input_size=(size[0] // 2, size[1] // 2))
    notes = package(str(src), tmp_path / "r.zip", export=False).notes
    assert any(n.startswith(f"the weights were trained on {size[0] // 2}x{size[1] // 2} images") and
               n.endswith(f"spatial_shape in configs/metadata.json, to {[size[0] // 2, size[1] // 2]}") for n in notes)


def test_package_writes_wrapped_weights_as_a_plain_state_dict(tmp_path):
    src = make_tiny_bundle("polyp_seg", tmp_path)
    state = torch.load(save_weights(src), weights_only=True)
    wrapped = tmp_path / "ddp.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 9}, wrapped)
    result = package(str(src), tmp_path / "zips", checkpoint=str(wrapped), export=False)
    folder = safe_extract(result.zip_path, tmp_path / "unpacked")
    packed = torch.load(folder / "models" / "model.pt", weights_only=True)
    assert sorted(packed) == sorted(state) and all(torch.equal(packed[k], state[k]) for k in state)


def test_package_refuses_a_link_that_leaves_the_bundle(tmp_path):
    src = make_tiny_bundle("polyp_seg", tmp_path)
    save_weights(src)
    outside = tmp_path / "secret.txt"
    outside.write_text("not part of the bundle")
    os.symlink(outside, src / "docs" / "notes.txt")
    with pytest.raises(BundleCheckError, match=r"notes.txt: links to .*secret.txt, outside the bundle folder"):
        package(str(src), tmp_path / "zips", export=False)


def test_package_reports_every_metadata_problem_and_writes_nothing(tmp_path):
    src = make_tiny_bundle("polyp_seg", tmp_path)
    save_weights(src)
    meta = json.loads((src / "configs" / "metadata.json").read_text())
    meta["version"] = "9.9.9"
    del meta["task"]
    (src / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit) as failure:
        Commands().package(str(src), str(tmp_path / "zips"), export=False)
    message = str(failure.value)
    assert "'task' is a required property" in message and "version '9.9.9' has no changelog entry" in message
    assert not (tmp_path / "zips").exists()


def test_cli_package_prints_what_passed(tmp_path, capsys):
    src = make_tiny_bundle("isic_skin_lesion", tmp_path)
    save_weights(src)
    Commands().package(str(src), str(tmp_path / "release.zip"), export=False)
    printed = capsys.readouterr().out
    assert f"{tmp_path / 'release.zip'}: isic_skin_lesion v" in printed and "passed: verify_net_in_out" in printed
    assert (tmp_path / "release.zip").is_file()


def _zip_with(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            archive.writestr(info, data)
    return path


@pytest.mark.parametrize("member,mode,message", [
    ("../escaped.txt", None, "points outside"),
    ("bundle/../../escaped.txt", None, "points outside"),
    ("/tmp/escaped.txt", None, "points outside"),
    ("bundle/link", stat.S_IFLNK | 0o777, "is a symbolic link"),
])
def test_safe_extract_refuses_members_outside_the_target(member, mode, message, tmp_path):
    archive = _zip_with(tmp_path / "evil.zip", [("bundle/configs/metadata.json", b"{}", None), (member, b"x", mode)])
    target = tmp_path / "target"
    with pytest.raises(UnsafeArchiveError, match=message):
        safe_extract(archive, target)
    assert not (tmp_path / "escaped.txt").exists() and not (target / "bundle").exists()


def test_safe_extract_wants_one_new_folder(tmp_path):
    two = _zip_with(tmp_path / "two.zip", [("a/x.txt", b"1", None), ("b/y.txt", b"2", None)])
    with pytest.raises(UnsafeArchiveError, match=r"holds one folder, found \['a', 'b'\]"):
        safe_extract(two, tmp_path / "t")
    one = _zip_with(tmp_path / "one.zip", [("a/x.txt", b"1", None)])
    assert (safe_extract(one, tmp_path / "t") / "x.txt").read_text() == "1"
    with pytest.raises(FileExistsError, match="already exists"):
        safe_extract(one, tmp_path / "t")
