"""DICOM input of ``predict synapse_multiorgan`` as exports come: several series in one folder (each a volume of its
own, a 1-slice scout skipped), series with missing slices (skipped, naming the gap), exports nested several levels
deep, a single slice file given as the input, and MetaImage data files beside their headers."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from reliability_helpers import tiny_bundle_with_weights, write_dicom_slices

UID_ROOT = "1.2.826.0.1.3680043.2.1125.9"


def _volume(size=(24, 24, 8), spacing=(0.8, 0.75, 3.0), origin=(10.0, -20.0, -40.0), direction=None, seed=0):
    """A SimpleITK CT-like volume (x, y, z sizes): fat with a soft-tissue block."""
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    hu = np.full(size[::-1], -100, np.int16) + rng.integers(-5, 5, size[::-1]).astype(np.int16)
    hu[1:4, 4:12, 3:10] = 60
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def _oblique(angle=0.3):
    """A direction rotated about z and tilted, as an oblique acquisition's."""
    c, s, t = np.cos(angle), np.sin(angle), 0.2
    rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    return tuple((rx @ rz).flatten().tolist())


def _write_series(image, folder: Path, uid: str, **options):
    """``image`` as DICOM files of series ``uid`` in ``folder``, in this file's study (``write_dicom_slices``)."""
    return write_dicom_slices(image, folder, uid, study_uid=f"{UID_ROOT}.1", **options)


def _ras_affine(image) -> np.ndarray:
    """The NIfTI (RAS) affine of a SimpleITK (LPS) image."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def _names(volumes):
    from vmunet_monai.predict_volume import _output_name

    return [_output_name(v) for v in volumes]


def test_each_series_of_a_folder_is_a_volume_and_a_scout_is_skipped(tmp_path):
    from vmunet_monai.predict_volume import DicomSeries, find_volumes

    study = tmp_path / "in" / "study"
    _write_series(_volume(), study, f"{UID_ROOT}.2.9", prefix="ax", description="Abdomen 3.0 B30f/CE", number="3")
    _write_series(_volume(), study, f"{UID_ROOT}.2.1", zs=[4], prefix="scout", description="Topogram", number="1")
    _write_series(_volume((20, 22, 6), seed=1), study, f"{UID_ROOT}.2.5", prefix="other")  # no number, no name
    single = _write_series(_volume(), tmp_path / "in" / "ct_b", f"{UID_ROOT}.3.1", description="AX")
    skipped, ignored = [], []
    found = find_volumes(str(tmp_path / "in"), ignored, skipped, split_series=True)
    assert _names(found) == ["ct_b_seg.nii.gz", "study_s3_Abdomen_3.0_B30f_CE_seg.nii.gz",
                             "study_series_5_seg.nii.gz"]
    assert found[0] == str(single) and found[0].alone  # one series: the folder, read and named as before
    assert [s.uid for s in found[1:]] == [f"{UID_ROOT}.2.9", f"{UID_ROOT}.2.5"]
    assert all(isinstance(s, DicomSeries) and s == str(study) and not s.alone for s in found[1:])
    assert [len(s.files) for s in found[1:]] == [8, 6]
    assert all(os.path.basename(f).startswith("other") for f in found[2].files)
    assert ignored == [] and len(skipped) == 1
    reason = skipped[0]["reason"]
    assert reason.startswith(f"{study}: DICOM series s1_Topogram (SeriesInstanceUID {UID_ROOT}.2.1) has 1 slice")
    assert "(one 3D volume of several slices is expected" in reason
    # without a list to put them in, the series left out are named in a warning
    with pytest.warns(UserWarning, match="has 1 slice"):
        assert len(find_volumes(str(study), split_series=True)) == 2
    # the bundle's inference.json, whose ITKReader reads a folder as one series: the folder once, with a warning
    with pytest.warns(UserWarning, match=f"{study}: holds 3 DICOM series, read as one folder"):
        assert find_volumes(str(tmp_path / "in")) == [str(single), str(study)]


def test_two_series_with_one_description_get_distinct_names(tmp_path):
    from vmunet_monai.predict_volume import find_volumes

    study = tmp_path / "ct"  # a generic folder name: the case is named after the folder above, as for files
    _write_series(_volume(), study, f"{UID_ROOT}.4.17", prefix="a", description="AX")
    _write_series(_volume(seed=2), study, f"{UID_ROOT}.4.18", prefix="b", description="AX")
    case = tmp_path.name
    found = find_volumes(str(study), split_series=True)
    assert _names(found) == [f"{case}_AX_17_seg.nii.gz", f"{case}_AX_18_seg.nii.gz"]


def test_a_series_with_missing_or_uneven_slices_is_skipped_naming_the_gap(tmp_path):
    from vmunet_monai.predict_volume import find_volumes

    volume = _volume((24, 24, 10))
    gap = _write_series(volume, tmp_path / "in" / "gap", f"{UID_ROOT}.5.1", zs=[0, 1, 2, 5, 6, 7, 8, 9])
    # rounded positions (0.05 mm off) are evenly spaced; so is a series written in reverse file order
    jitter = [0.0, 0.05, -0.04, 0.03, 0.0, -0.05, 0.02, 0.0, 0.04, -0.03]
    _write_series(volume, tmp_path / "in" / "rounded", f"{UID_ROOT}.5.2", shift=jitter)
    uneven = _write_series(volume, tmp_path / "in" / "uneven", f"{UID_ROOT}.5.3",
                           shift=[0, 0, 0, 0, 0, 1.2, 1.2, 1.2, 1.2, 1.2])
    skipped = []
    assert _names(find_volumes(str(tmp_path / "in"), None, skipped)) == ["rounded_seg.nii.gz"]
    reasons = [s["reason"] for s in skipped]
    assert [s["file"] for s in skipped] == [str(gap), str(uneven)]
    assert reasons[0].startswith(f"{gap}: slices missing or unevenly spaced: a 9.00 mm gap between slice002.dcm "
                                 "(at -34.00 mm) and slice005.dcm (at -25.00 mm), where its 8 slices are usually "
                                 "3.00 mm apart (")
    assert "within 10% or 0.1 mm of the median spacing" in reasons[0]
    assert "a 4.20 mm gap between slice004.dcm" in reasons[1] and "slice005.dcm" in reasons[1]
    # in a folder of several series, the message names the series too
    _write_series(volume, gap, f"{UID_ROOT}.5.4", prefix="full", description="FULL")
    skipped = []
    assert _names(find_volumes(str(gap), None, skipped, split_series=True)) == ["gap_FULL_seg.nii.gz"]
    assert skipped[0]["reason"].startswith(f"{gap}: DICOM series series_1 (SeriesInstanceUID {UID_ROOT}.5.1): "
                                           "slices missing or unevenly spaced: a 9.00 mm gap")


def test_nested_exports_single_slice_files_and_metaimage_data_files(tmp_path):
    import SimpleITK as sitk

    from vmunet_monai.predict_volume import find_volumes

    series = _write_series(_volume(), tmp_path / "in" / "PAT001" / "STUDY1" / "SERIES2", f"{UID_ROOT}.6.1")
    (tmp_path / "in" / "PAT001" / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)  # no image in it
    sitk.WriteImage(_volume(), str(tmp_path / "in" / "meta.mhd"))  # meta.mhd + meta.raw
    (tmp_path / "in" / "notes.txt").write_text("not a volume")
    deep = tmp_path / "in" / "site" / "PAT002" / "ct1.nii.gz"
    deep.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), str(deep))
    assert (tmp_path / "in" / "meta.raw").is_file()
    ignored, skipped = [], []
    found = find_volumes(str(tmp_path / "in"), ignored, skipped)
    assert found == sorted([str(tmp_path / "in" / "meta.mhd"), str(series), str(deep)]) and skipped == []
    assert ignored == [str(tmp_path / "in" / "notes.txt")]  # meta.raw is read with meta.mhd
    with pytest.raises(FileNotFoundError) as failure:
        find_volumes(str(series / "slice003.dcm"))
    message = str(failure.value)
    assert message.startswith(f"{series / 'slice003.dcm'}: a single DICOM file")
    assert f"folder of the series, {series}," in message


def test_predict_writes_each_series_of_a_folder_on_its_own_grid(tmp_path, monkeypatch):
    """Through predict: a study folder holding an axial series, an oblique series of another grid and a scout, beside
    a folder of one series; each series segmented on its own grid and named apart, the scout skipped and named, the
    series recorded in prediction.json, and the temporary copies removed."""
    import SimpleITK as sitk

    from vmunet_monai.predict import predict

    bundle = tiny_bundle_with_weights("synapse_multiorgan", tmp_path / "bundle")
    study = tmp_path / "in" / "study"
    axial = _volume()
    oblique = _volume((20, 22, 6), spacing=(0.9, 0.7, 2.5), origin=(-12.345, 33.3, -100.25), direction=_oblique(),
                      seed=1)
    _write_series(axial, study, f"{UID_ROOT}.7.9", prefix="ax", description="AXIAL", number="2")
    _write_series(oblique, study, f"{UID_ROOT}.7.5", prefix="obl", description="OBLIQUE", number="4")
    _write_series(axial, study, f"{UID_ROOT}.7.1", zs=[4], prefix="scout", description="SCOUT", number="1")
    alone = _volume((24, 20, 7), spacing=(0.7, 0.7, 3.0), origin=(0.0, 0.0, 12.5), seed=3)
    _write_series(alone, tmp_path / "in" / "ct_c", f"{UID_ROOT}.8.1")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "out"
    written = predict(str(bundle), str(tmp_path / "in"), str(out), device="cpu")
    expected = {"ct_c_seg.nii.gz": alone, "study_s2_AXIAL_seg.nii.gz": axial, "study_s4_OBLIQUE_seg.nii.gz": oblique}
    assert sorted(os.path.basename(w) for w in written) == sorted(expected)
    for name, image in expected.items():
        seg = nib.load(out / name)
        assert seg.shape == image.GetSize(), name
        assert np.allclose(seg.affine, _ras_affine(image), atol=1e-4), (name, seg.affine, _ras_affine(image))
        back = sitk.ReadImage(str(out / name))
        assert np.allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-5), name
        assert np.allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4), name
        assert np.allclose(back.GetDirection(), image.GetDirection(), atol=1e-5), name
        assert set(np.unique(np.asarray(seg.dataobj))) <= set(range(9))
    assert sorted(p.name for p in (out / "montages").iterdir()) == sorted(n[: -len(".nii.gz")] + ".png"
                                                                         for n in expected)
    record = json.loads((out / "prediction.json").read_text())
    assert record["written"] == 3 and record["finished"]
    assert len(record["skipped"]) == 1 and "SeriesInstanceUID 1.2.826.0.1.3680043.2.1125.9.7.1" in record["skipped"][0]
    series = {s["output"]: s for s in record["dicom_series"]}
    assert set(series) == set(expected)
    tilted = series["study_s4_OBLIQUE_seg.nii.gz"]
    assert (tilted["series_instance_uid"], tilted["slices"], tilted["folder"]) == (f"{UID_ROOT}.7.5", 6, str(study))
    assert series["ct_c_seg.nii.gz"]["series_instance_uid"] == f"{UID_ROOT}.8.1"
    cases = [line.split(",")[0] for line in (out / "volumes.csv").read_text().splitlines()[1:]]
    assert sorted(cases) == sorted(n[: -len("_seg.nii.gz")] for n in expected)
    assert list(scratch.iterdir()) == []  # the series' temporary copies are gone
