"""What the bundles' ``inference.json`` segments: the 2D bundles' ``inference_items`` and the CT bundle's
``inference_volumes`` check each input as ``predict`` does (an unusable file, or one whose output another input
already writes, is skipped and named in a warning; nothing left is an error naming the folder), and a prepared
dataset folder (one holding ``datalist.json``) gives its test split, for the bundles and for ``predict``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from reliability_helpers import tiny_bundle_with_weights, truncate, write_rgb
from tiny_bundles import write_ct_volume

from vmunet_monai.data.common import inference_items
from vmunet_monai.predict import NothingToPredictError
from vmunet_monai.predict_volume import inference_volumes
from vmunet_monai.validation import InputError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks in-process: see conftest


def _broken_images(folder: Path) -> dict[str, str]:
    """Unusable 2D files in ``folder``: name -> what the warning that skips it says."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zz_broken.png").write_text("not an image")
    truncate(write_rgb(folder / "cut.png", 64, 64))
    Image.fromarray(np.zeros((1, 30, 3), np.uint8)).save(folder / "thin.png")
    frames = [Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)) for i in range(3)]
    frames[0].save(folder / "stack.tif", save_all=True, append_images=frames[1:])
    return {"zz_broken.png": "is not an image file", "cut.png": "cannot be decoded", "thin.png": "is 1x30 pixels",
            "stack.tif": "holds 3 frames"}


def _skipped(record) -> dict[str, str]:
    """Skip warnings by the name of the file each names first: ``skipped <file>: <reason>``."""
    found = {}
    for w in record:
        text = str(w.message)
        if text.startswith("skipped "):
            found[Path(text[len("skipped "):].split(": ", 1)[0]).name] = text
    return found


def _write_datalist(folder: Path, splits: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "datalist.json").write_text(json.dumps(splits))
    return folder


def test_inference_items_skips_unusable_images_and_names_each(tmp_path):
    """One broken file no longer stops the run part way (or goes through as frame 0): it is skipped, named with the
    reason, and the rest is segmented; a folder of broken files only is an error naming it."""
    folder = tmp_path / "in"
    bad = _broken_images(folder)
    good = [write_rgb(folder / "good.png"), write_rgb(folder / "sub" / "other.jpg", seed=1)]
    (folder / "ct.nii.gz").write_bytes(b"\x1f\x8b")  # a volume and a GIF among the images: named, as predict does
    (folder / "clip.gif").write_bytes(b"GIF89a")
    (folder / "notes.txt").write_text("a file no one takes for an image: no word")
    bad.update({"ct.nii.gz": "is a volume file (NIfTI, NRRD, MHA or DICOM, read by the synapse_multiorgan "
                             "bundle; 2D images are expected)",
                "clip.gif": "a GIF, which is not read (save it as PNG)"})
    with pytest.warns(UserWarning) as record:
        items = inference_items(None, str(folder))
    assert [item["image"] for item in items] == [str(p.resolve()) for p in good]
    skipped = _skipped(record)
    assert set(skipped) == set(bad)
    for name, reason in bad.items():
        assert f"skipped {(folder / name).resolve()}: {reason}" in skipped[name]
    only_bad = tmp_path / "only_bad"
    _broken_images(only_bad)
    with pytest.warns(UserWarning), pytest.raises(NothingToPredictError,
                                                  match=rf"^{only_bad}: no image could be segmented \(4 file"):
        inference_items(None, str(only_bad))
    with pytest.warns(UserWarning), pytest.raises(InputError, match="zz_broken.png: is not an image file"):
        inference_items(None, str(only_bad / "zz_broken.png"))  # one file given


def test_inference_items_keeps_one_image_per_mask(tmp_path):
    """``photo.JPG``, ``photo.jpeg`` and ``photo.png`` of one folder would each write ``masks/photo_mask.png``: the
    PNG is kept (as predict keeps it) and each other one is skipped, the warning naming both files; a ``photo.png``
    in another folder has its own mask."""
    folder = tmp_path / "in"
    jpg, jpeg = write_rgb(folder / "photo.JPG"), write_rgb(folder / "photo.jpeg", seed=1)
    png, elsewhere = write_rgb(folder / "photo.png", seed=2), write_rgb(folder / "b" / "photo.png", seed=3)
    with pytest.warns(UserWarning) as record:
        items = inference_items(None, str(folder))
    assert [item["image"] for item in items] == [str(png.resolve()), str(elsewhere.resolve())]
    skipped = _skipped(record)
    assert set(skipped) == {"photo.JPG", "photo.jpeg"}
    for source in (jpg, jpeg):
        assert (f"skipped {source.resolve()}: its mask photo_mask.png is already the output of {png.resolve()}"
                in skipped[source.name])


def test_inference_items_checks_once_per_run_and_again_after_a_change(tmp_path):
    """The bundle's inference.json asks twice (datalist, data_root_dir): the second answer is the first, with no
    file decoded or named again; a file changed since is checked again."""
    folder = tmp_path / "in"
    write_rgb(folder / "good.png")
    (folder / "zz_broken.png").write_text("not an image")
    with pytest.warns(UserWarning, match="zz_broken.png: is not an image file"):
        first = inference_items(None, str(folder))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert inference_items(None, str(folder)) == first and len(first) == 1
    write_rgb(folder / "zz_broken.png", seed=4)  # repaired
    assert [Path(item["image"]).name for item in inference_items(None, str(folder))] == ["good.png", "zz_broken.png"]


def test_inference_items_checks_the_datalist_split_and_names_missing_splits(tmp_path):
    raw = tmp_path / "raw"
    good = write_rgb(raw / "a.png")
    (raw / "b.png").write_text("not an image")
    prepared = _write_datalist(tmp_path / "prepared", {"training": [{"image": "../raw/a.png", "label": "x.png"}],
                                                       "test": [{"image": "../raw/a.png", "label": "x.png"},
                                                                {"image": "../raw/b.png", "label": "y.png"}]})
    with pytest.warns(UserWarning, match="b.png: is not an image file"):
        assert inference_items(str(prepared), None) == [{"image": str(good.resolve())}]
    no_test = _write_datalist(tmp_path / "no_test", {"training": [{"image": "a.png"}], "validation": [{"image": "b"}]})
    with pytest.raises(InputError, match=r"no_test/datalist.json: no split 'test'; the datalist has \['training', "
                                         r"'validation'\] \(inference segments"):
        inference_items(str(no_test), None)


def _prepared_ct(root: Path) -> tuple[Path, list[Path]]:
    """A prepared CT folder as ``prepare synapse_multiorgan`` writes it: the label maps in labels/, the images where
    they were (absolute paths), a datalist of a training and two test cases, and preview.png."""
    images = [write_ct_volume(root.parent / "raw" / "img" / f"img000{i}.nii.gz", shape=(24, 20, 4), seed=i)
              for i in (1, 2, 3)]
    for i in (1, 2, 3):
        write_ct_volume(root / "labels" / f"label000{i}.nii.gz", shape=(24, 20, 4), label=True)
    entry = [{"case": f"000{i}", "image": str(images[i - 1]), "label": f"labels/label000{i}.nii.gz"} for i in (1, 2, 3)]
    _write_datalist(root, {"training": entry[2:], "test": entry[:2]})
    write_rgb(root / "preview.png")
    return root, images[:2]


def test_inference_volumes_of_a_prepared_folder_are_its_test_split(tmp_path):
    """--dataset_dir PREPARED segments the datalist's test volumes (as the 2D bundles segment their test split),
    never the label maps under labels/; a datalist without a test split is refused, its splits named."""
    prepared, test = _prepared_ct(tmp_path / "prepared")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert inference_volumes(str(prepared)) == [str(p.resolve()) for p in test]
    no_test = _write_datalist(tmp_path / "no_test", {"training": [{"image": "a.nii.gz"}]})
    with pytest.raises(InputError, match=r"no_test/datalist.json: no split 'test'; the datalist has \['training'\]"):
        inference_volumes(str(no_test))


def test_inference_volumes_skips_unusable_volumes_and_names_each(tmp_path):
    """A 4D NIfTI reached the network ("built for 3-channel input; got 2 channels", no file named) and a truncated
    one stopped the run: each is skipped and named, the rest segmented; nothing left is an error naming the folder."""
    folder = tmp_path / "scans"
    good = write_ct_volume(folder / "good.nii.gz", shape=(24, 20, 4))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 2), np.int16), np.eye(4)), str(folder / "four_d.nii.gz"))
    truncate(write_ct_volume(folder / "cut.nii.gz", shape=(24, 20, 4), seed=1))
    with pytest.warns(UserWarning) as record:
        assert inference_volumes(str(folder)) == [str(good)]
    skipped = _skipped(record)
    assert set(skipped) == {"four_d.nii.gz", "cut.nii.gz"}
    assert "four_d.nii.gz: has shape (8, 8, 4, 2): 2 channels or time points" in skipped["four_d.nii.gz"]
    assert "cut.nii.gz: cannot be read as NIfTI" in skipped["cut.nii.gz"]
    good.unlink()
    with pytest.warns(UserWarning), pytest.raises(NothingToPredictError,
                                                  match=rf"^{folder}: no volume could be segmented \(2 skipped"):
        inference_volumes(str(folder))


def test_predict_on_a_prepared_2d_folder_segments_its_test_split(tmp_path, capsys):
    """predict given a prepared folder segmented its preview.png: it segments the test split, as the bundle's
    inference with --dataset_dir does, and says so."""
    from vmunet_monai.predict import predict

    bundle = tiny_bundle_with_weights("isic_skin_lesion", tmp_path / "bundle")
    raw = tmp_path / "raw"
    tests = [write_rgb(raw / "a.png"), write_rgb(raw / "b.jpg", seed=1)]
    write_rgb(raw / "train.png", seed=2)
    prepared = _write_datalist(tmp_path / "prepared", {"training": [{"image": "../raw/train.png"}],
                                                       "test": [{"image": "../raw/a.png"}, {"image": "../raw/b.jpg"}]})
    write_rgb(prepared / "preview.png", seed=3)
    result = predict(str(bundle), str(prepared), str(tmp_path / "out"), device="cpu")
    assert result["masks"] == [str(tmp_path / "out" / "masks" / f"{p.stem}_mask.png") for p in tests]
    assert sorted(p.name for p in (tmp_path / "out" / "masks").rglob("*.png")) == ["a_mask.png", "b_mask.png"]
    assert "segmenting the 2 image(s) of its 'test' split" in capsys.readouterr().out


def test_predict_on_a_prepared_ct_folder_segments_its_test_volumes(tmp_path, capsys):
    from vmunet_monai.predict import predict

    bundle = tiny_bundle_with_weights("synapse_multiorgan", tmp_path / "bundle")
    prepared, test = _prepared_ct(tmp_path / "prepared")
    written = predict(str(bundle), str(prepared), str(tmp_path / "segs"), device="cpu")
    assert [Path(p).name for p in written] == ["img0001_seg.nii.gz", "img0002_seg.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "segs").glob("*.nii.gz")) == ["img0001_seg.nii.gz",
                                                                           "img0002_seg.nii.gz"]
    assert "segmenting the 2 volume(s) of its 'test' split" in capsys.readouterr().out


def _run_inference(bundle: Path, folder: Path, out: Path) -> None:
    """The bundle's own inference.json, run in-process on ``folder`` into ``out`` on the CPU."""
    from monai.bundle import ConfigWorkflow

    configs = bundle / "configs"
    workflow = ConfigWorkflow(config_file=str(configs / "inference.json"), meta_file=str(configs / "metadata.json"),
                              logging_file=str(configs / "logging.conf"), workflow_type="infer",
                              bundle_root=str(bundle), input_dir=str(folder), output_dir=str(out), num_workers=0,
                              device="$torch.device('cpu')")
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def test_isic_inference_config_skips_broken_and_duplicate_inputs(tmp_path, capsys):
    """The ISIC bundle's own inference.json, run in-process on a folder with a broken file, two images of one
    stem and a mask beside its image: the good images get their masks, the others are named and nothing is
    overwritten; the run ends saying how many images it segmented and where their results lie."""
    bundle = tiny_bundle_with_weights("isic_skin_lesion", tmp_path / "bundle")
    folder = tmp_path / "in"
    good = [write_rgb(folder / "photo.png", 40, 52), write_rgb(folder / "sub" / "lesion.jpg", 36, 30, seed=1)]
    write_rgb(folder / "photo.JPG", 30, 30, seed=2)
    Image.fromarray(np.zeros((30, 36), np.uint8)).save(folder / "sub" / "lesion_mask.png")  # its ground truth
    (folder / "zz_broken.png").write_text("not an image")
    out = tmp_path / "out"
    capsys.readouterr()
    with pytest.warns(UserWarning) as record:
        _run_inference(bundle, folder, out)
    said = capsys.readouterr().out
    assert f"2 images segmented: masks in {out}/masks, overlays in {out}/overlays\n" in said
    assert "earlier run" not in said
    assert any("not segmented: 1 mask file(s) beside their images" in str(w.message) for w in record)
    masks = {p.relative_to(out / "masks").as_posix(): p for p in (out / "masks").rglob("*.png")}
    assert sorted(masks) == ["photo_mask.png", "sub/lesion_mask.png"]
    for source, mask in zip(good, (masks["photo_mask.png"], masks["sub/lesion_mask.png"])):
        with Image.open(source) as image, Image.open(mask) as written:
            assert written.size == image.size  # photo.png's own mask, not photo.JPG's 30x30 one
    skipped = _skipped(record)
    assert set(skipped) == {"photo.JPG", "zz_broken.png"}
    assert "is not an image file" in skipped["zz_broken.png"]
    assert f"already the output of {good[0].resolve()}" in skipped["photo.JPG"]


def test_bundle_inference_names_an_earlier_run_and_refuses_an_output_inside_its_input(tmp_path, capsys):
    """A second run into one folder: the masks of the first that it did not replace are named (a later score of
    the folder reads them too). An output folder inside the input folder is refused: a second run segmented the
    first's overlays (and the CT bundle its segmentations) as images."""
    bundle = tiny_bundle_with_weights("isic_skin_lesion", tmp_path / "bundle")
    folder = tmp_path / "in"
    write_rgb(folder / "a.png", 40, 52)
    write_rgb(folder / "b.png", 36, 30, seed=1)
    out = tmp_path / "out"
    _run_inference(bundle, folder, out)
    (folder / "b.png").unlink()
    capsys.readouterr()
    _run_inference(bundle, folder, out)
    said = capsys.readouterr().out
    assert f"1 image segmented: masks in {out}/masks, overlays in {out}/overlays\n" in said
    assert f"note: {out}/masks also holds 1 result(s) of an earlier run that this one did not replace (e.g. " \
        "b_mask.png)" in said
    with pytest.raises(Exception) as failure:
        _run_inference(bundle, folder, folder / "out")
    cause = failure.value
    while not isinstance(cause, InputError) and (cause.__cause__ or cause.__context__) is not None:
        cause = cause.__cause__ or cause.__context__
    assert f"the output folder (--output_dir) is inside the input folder {folder}" in str(cause)
    assert not (folder / "out" / "masks").exists()
    with pytest.raises(FileNotFoundError, match="give a folder of images to segment as --input_dir"):
        inference_items(str(folder), None)  # a folder of images given as --dataset_dir
    volumes = tmp_path / "volumes"
    write_ct_volume(volumes / "case1.nii.gz")
    with pytest.raises(InputError, match="the output folder \\(--output_dir\\) is the input folder"):
        inference_volumes(str(volumes), str(volumes))
    assert inference_volumes(str(volumes), str(tmp_path / "ct_out")) == [str(volumes / "case1.nii.gz")]
