"""Synapse importer (RawData and the TransUNet release) and the synthetic CT demo volumes."""

import json
import os

import nibabel as nib
import numpy as np
import pytest

from vmunet_monai.data import synapse


def _load_list(path):
    with open(path) as f:
        return json.load(f)


def test_btcv_label_map_keeps_the_eight_organs():
    btcv = np.arange(14).reshape(2, 7)
    mapped = synapse.map_btcv_labels(btcv)
    expected = {0: 0, 1: 7, 2: 4, 3: 3, 4: 2, 5: 0, 6: 5, 7: 8, 8: 1, 9: 0, 10: 0, 11: 6, 12: 0, 13: 0}
    assert {int(b): int(m) for b, m in zip(btcv.ravel(), mapped.ravel())} == expected
    assert mapped.dtype == np.uint8
    with pytest.raises(ValueError, match="0-13"):
        synapse.map_btcv_labels(np.array([0, 14]))


def test_demo_then_prepare_rawdata(tmp_path):
    raw = synapse.demo_data(str(tmp_path / "demo"), num=5, seed=3, shape=(32, 32, 8))
    assert raw.endswith("RawData")
    out = tmp_path / "prepared"
    datalist = _load_list(synapse.prepare(str(tmp_path / "demo"), str(out)))  # the parent of RawData works too
    train, val, test = (set(e["case"] for e in datalist[k]) for k in ("training", "validation", "test"))
    assert train and val and test
    assert not (train & val) and not (train & test) and not (val & test)
    assert {int(c) for c in test} <= set(synapse.STANDARD_TEST_CASES)
    assert {int(c) for c in train | val} <= set(synapse.STANDARD_TRAIN_CASES)
    entry = datalist["training"][0]
    image = nib.load(os.path.join(out, entry["image"]))
    label = nib.load(os.path.join(out, entry["label"]))
    raw_label = nib.load(os.path.join(raw, "Training", "label", f"label{entry['case']}.nii.gz"))
    zooms = image.header.get_zooms()
    assert zooms[2] > 2 * zooms[0]  # anisotropic: slices much thicker than the in-plane spacing
    assert image.shape == label.shape == (32, 32, 8) and np.allclose(image.affine, label.affine)
    hu = np.asarray(image.dataobj)
    assert hu.min() <= -900 and 40 < np.median(hu[np.asarray(raw_label.dataobj) == 6]) < 80  # air; liver ~60 HU
    mapped, btcv = np.asarray(label.dataobj), np.asarray(raw_label.dataobj)
    assert set(np.unique(mapped)) <= set(range(9))
    for btcv_value, organ in synapse.BTCV_TO_SYNAPSE.items():
        assert np.array_equal(mapped == organ, btcv == btcv_value)


def test_standard_split_and_seeded_validation(tmp_path):
    synapse.demo_data(str(tmp_path / "demo"), num=30, shape=(8, 8, 8))
    a = _load_list(synapse.prepare(str(tmp_path / "demo" / "RawData"), str(tmp_path / "a"), seed=1))
    b = _load_list(synapse.prepare(str(tmp_path / "demo" / "RawData"), str(tmp_path / "b"), seed=1))
    c = _load_list(synapse.prepare(str(tmp_path / "demo" / "RawData"), str(tmp_path / "c"), seed=2, num_val=4))
    assert [int(x) for x in a["split"]["test"]] == list(synapse.STANDARD_TEST_CASES)
    assert sorted(int(x) for x in a["split"]["training"] + a["split"]["validation"]) == list(
        synapse.STANDARD_TRAIN_CASES
    )
    assert len(a["split"]["validation"]) == 3 and a["split"] == b["split"]
    assert len(c["split"]["validation"]) == 4
    with pytest.raises(ValueError, match="num_val"):
        synapse.prepare(str(tmp_path / "demo"), str(tmp_path / "d"), num_val=18)


def test_shape_and_spacing_options_refused_by_name(tmp_path):
    """--shape and --spacing name the option, the value as typed and the rule; --spacing is refused where the volumes
    carry their own spacing instead of being ignored."""
    from vmunet_monai.validation import InputError

    for shape in ("32,32", (32, 32, "x"), "32,32,7.5", "32,32,4", "inf,32,32"):
        shown = ",".join(map(str, shape)) if isinstance(shape, tuple) else shape
        with pytest.raises(InputError, match=rf"^--shape '{shown}': give three whole numbers separated by commas, "
                                             r"each at least 8"):
            synapse.demo_data(str(tmp_path / "bad"), num=4, shape=shape)
    for layout in ("rawdata", "acdc"):
        with pytest.raises(InputError, match=r"^--spacing '1,0,3': give three numbers separated by commas, "
                                             r"each above 0"):
            synapse.demo_data(str(tmp_path / "bad"), num=4, shape="32,32,8", spacing=(1, 0, 3), layout=layout)
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    raw = synapse.demo_data(str(tmp_path / "demo"), num=4, shape="[32, 32, 8]", spacing="1,1,3")
    assert nib.load(next((tmp_path / "demo").rglob("img*.nii.gz"))).header.get_zooms() == (1.0, 1.0, 3.0)
    with pytest.raises(InputError, match=r"^--spacing '1,1,3': only for the TransUNet release.* read as rawdata"):
        synapse.prepare(raw, str(tmp_path / "out"), spacing=(1, 1, 3))


def test_transunet_release_converted_with_stated_spacing(tmp_path):
    h5py = pytest.importorskip("h5py", reason="the TransUNet test volumes are HDF5 files (pip install h5py)")
    rng = np.random.default_rng(0)
    root = tmp_path / "Synapse"
    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir()
    volumes = {}
    for case in (5, 6, 7):
        image = rng.random((4, 16, 16)).astype(np.float32)
        label = rng.integers(0, 9, size=(4, 16, 16)).astype(np.uint8)
        volumes[case] = (image, label)
        for z in range(4):
            np.savez(root / "train_npz" / f"case{case:04d}_slice{z:03d}.npz", image=image[z], label=label[z])
    image = rng.random((3, 16, 16)).astype(np.float32)
    label = rng.integers(0, 9, size=(3, 16, 16)).astype(np.uint8)
    volumes[1] = (image, label)
    with h5py.File(root / "test_vol_h5" / "case0001.npy.h5", "w") as f:
        f["image"], f["label"] = image, label
    out = tmp_path / "out"
    datalist = _load_list(synapse.prepare(str(tmp_path), str(out), spacing="0.7,0.7,2.5"))
    assert datalist["spacing_mm"] == [0.7, 0.7, 2.5]
    assert [e["case"] for e in datalist["test"]] == ["0001"]
    entries = {e["case"]: e for k in ("training", "validation", "test") for e in datalist[k]}
    assert sorted(entries) == ["0001", "0005", "0006", "0007"]
    for case, (image, label) in volumes.items():
        img = nib.load(os.path.join(out, entries[f"{case:04d}"]["image"]))
        lab = nib.load(os.path.join(out, entries[f"{case:04d}"]["label"]))
        assert img.shape == (16, 16, image.shape[0])
        assert np.allclose(img.header.get_zooms(), (0.7, 0.7, 2.5))
        # HU restored so that the bundle's [-125, 275] window gives the released values back
        restored = (np.asarray(img.dataobj) + 125) / 400
        assert np.allclose(np.transpose(restored, (2, 0, 1)), image, atol=1e-5)
        assert np.array_equal(np.transpose(np.asarray(lab.dataobj), (2, 0, 1)), label)


def test_unknown_layout_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a Synapse dataset"):
        synapse.prepare(str(tmp_path), str(tmp_path / "out"), layout="btcv")


def test_cli_dispatch(tmp_path):
    from vmunet_monai.data import demo_data, prepare

    demo_data("synapse_multiorgan", str(tmp_path / "raw"), num=4)
    path = prepare("synapse_multiorgan", str(tmp_path / "raw"), str(tmp_path / "out"))
    assert len(_load_list(path)["test"]) == 2


def test_imagestr_labelstr_layout_reads_like_rawdata(tmp_path):
    """The same cases moved into imagesTr/ and labelsTr/ (MONAI's BTCV tutorial layout, one level below RAW)
    give the same split and the same mapped labels as RawData."""
    import shutil

    raw = synapse.demo_data(str(tmp_path / "demo"), num=5, seed=4, shape=(24, 24, 8))
    expected = _load_list(synapse.prepare(raw, str(tmp_path / "from_rawdata")))
    tutorial = tmp_path / "btcv" / "dataset"
    shutil.copytree(os.path.join(raw, "Training", "img"), tutorial / "imagesTr")
    shutil.copytree(os.path.join(raw, "Training", "label"), tutorial / "labelsTr")
    (tutorial / "imagesTs").mkdir()
    got = _load_list(synapse.prepare(str(tmp_path / "btcv"), str(tmp_path / "out")))
    for split in ("training", "validation", "test"):
        assert [e["case"] for e in got[split]] == [e["case"] for e in expected[split]]
    assert got["source"].startswith("imagesTr/labelsTr")
    for a, b in zip(got["test"], expected["test"]):
        assert np.array_equal(np.asarray(nib.load(tmp_path / "out" / a["label"]).dataobj),
                              np.asarray(nib.load(tmp_path / "from_rawdata" / b["label"]).dataobj))
    # an image gzipped beside its label not (or the reverse) is still its pair
    first, second = sorted((tutorial / "imagesTr").iterdir())[:2]
    nib.save(nib.load(first), str(first).replace(".nii.gz", ".nii"))
    first.unlink()
    label = tutorial / "labelsTr" / second.name.replace("img", "label")
    nib.save(nib.load(label), str(label).replace(".nii.gz", ".nii"))
    label.unlink()
    mixed = _load_list(synapse.prepare(str(tmp_path / "btcv"), str(tmp_path / "mixed")))
    assert sorted(e["case"] for s in ("training", "validation", "test") for e in mixed[s]) == sorted(
        e["case"] for s in ("training", "validation", "test") for e in expected[s])


def test_transunet_gaps_and_a_missing_h5py_are_said(tmp_path):
    """A train_npz case with a slice missing is stacked with a warning naming the slice; no test_vol_h5/ is said
    (no test split); test volumes without h5py installed end the command line in one line, before anything is
    written."""
    import subprocess
    import sys

    rng = np.random.default_rng(3)
    root = tmp_path / "raw" / "Synapse"
    (root / "train_npz").mkdir(parents=True)
    for case in (5, 6, 7):
        for z in range(6):
            if (case, z) != (7, 3):
                np.savez(root / "train_npz" / f"case{case:04d}_slice{z:03d}.npz",
                         image=rng.random((16, 16)).astype(np.float32),
                         label=rng.integers(0, 9, (16, 16)).astype(np.uint8))
    with pytest.warns(UserWarning) as caught:
        datalist = _load_list(synapse.prepare(str(tmp_path / "raw"), str(tmp_path / "out"), spacing="1,1,2"))
    said = [str(w.message) for w in caught]
    assert any(m.startswith("case0007: train_npz has no slice 3 between 0 and 5; its volume is stacked without them "
                            "(5 slices)") for m in said)
    assert any("no caseXXXX.npy.h5 in test_vol_h5/" in m and "no test cases" in m for m in said)
    assert datalist["test"] == []
    (root / "test_vol_h5").mkdir()
    (root / "test_vol_h5" / "case0001.npy.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    args = ["prepare", "synapse_multiorgan", str(tmp_path / "raw"), str(tmp_path / "out2"), "--spacing", "1,1,2"]
    code = f"import sys; sys.modules['h5py'] = None\nfrom vmunet_monai.cli import main\nmain({args!r})\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (f"error: {root / 'test_vol_h5'}: reading .npy.h5 volumes needs "
                                                    "h5py (pip install h5py)")
    assert not any((tmp_path / "out2").rglob("*"))  # nothing written into OUT
