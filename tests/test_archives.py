"""prepare on datasets as downloaded: one archive, or a folder of archives (ISIC's parts and CSV tables, PraNet's
TrainDataset.zip and TestDataset.zip, a Decathlon tar), unpacked into OUT/unpacked; cut-short, RAR, unsafe and
mixed inputs refused by name."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from vmunet_monai.data import demo_data, prepare
from vmunet_monai.data.archives import MARK, UNPACKED, archive_stem
from vmunet_monai.data.common import DatasetLayoutError, load_datalist
from vmunet_monai.validation import InputError


def _zip_folder(folder: Path, archive: Path, top: str | None = None) -> Path:
    """Zip ``folder``'s contents under ``top/`` (the archive's own top folder; none when ``top`` is None)."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                name = path.relative_to(folder).as_posix()
                zf.write(path, f"{top}/{name}" if top else name)
        zf.writestr("__MACOSX/._junk", b"resource fork")  # as macOS's archiver adds
    return archive


def _names(out: Path, split: str) -> list[str]:
    return sorted(Path(item["image"]).name for item in load_datalist(out, split))


@pytest.fixture(scope="module")
def isic_download(tmp_path_factory) -> tuple[Path, Path]:
    """ISIC 2017 as the challenge distributes it: a zip per part, the CSV tables loose; and the same extracted."""
    root = tmp_path_factory.mktemp("isic")
    raw = root / "extracted"
    demo_data("isic_skin_lesion", str(raw), num=8)
    download = root / "download"
    download.mkdir()
    for part in sorted(raw.iterdir()):
        if part.is_dir():
            _zip_folder(part, download / f"{part.name}.zip", top=part.name)
        else:
            shutil.copy2(part, download / part.name)
    return raw, download


def test_archive_stem():
    assert archive_stem("TrainDataset.zip") == "TrainDataset"
    assert archive_stem("/a/Task09_Spleen.tar") == "Task09_Spleen"
    assert archive_stem("RawData.TAR.GZ") == "RawData"
    assert archive_stem("x.tgz") == "x"
    assert archive_stem("img0001.nii.gz") is None  # a gzipped volume is not an archive
    assert archive_stem("ISIC_0000000.jpg") is None
    assert archive_stem(".zip") is None


def test_folder_of_archives_imports_as_the_extracted_folder(isic_download, tmp_path, capsys):
    raw, download = isic_download
    prepare("isic_skin_lesion", str(raw), str(tmp_path / "plain"))
    out = tmp_path / "prepared"
    prepare("isic_skin_lesion", str(download), str(out))
    for split in ("training", "validation", "test"):
        assert _names(out, split) == _names(tmp_path / "plain", split)
        for item in load_datalist(out, split):
            assert Path(item["image"]).is_file() and Path(item["label"]).is_file()
            assert (out / UNPACKED) in Path(item["image"]).parents
    doc = json.loads((out / "datalist.json").read_text())
    assert doc["meta"]["archives"] == sorted(str(p.resolve()) for p in download.glob("*.zip"))
    # the loose CSV tables came along (the diagnosis per image), the macOS forks did not
    assert sorted(p.name for p in (out / UNPACKED).glob("*.csv")) == sorted(p.name for p in download.glob("*.csv"))
    assert not list((out / UNPACKED).rglob("__MACOSX"))
    plain = json.loads((tmp_path / "plain" / "datalist.json").read_text())
    assert [i["dataset"] for i in doc["training"]] == [i["dataset"] for i in plain["training"]]
    # the download is as it was
    assert sorted(archive_stem(p) or p.name for p in download.iterdir()) == sorted(p.name for p in raw.iterdir())
    assert all(p.is_file() for p in download.iterdir())

    capsys.readouterr()
    marks = {p: p.stat().st_mtime_ns for p in (out / UNPACKED).glob(f"*/{MARK}")}
    prepare("isic_skin_lesion", str(download), str(out))
    assert "6 of 6 archive(s) unpacked already" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in marks} == marks  # reused, not unpacked again


def test_changed_archive_is_unpacked_again_and_gone_one_removed(isic_download, tmp_path):
    raw, download = isic_download
    copy = tmp_path / "download"
    shutil.copytree(download, copy)
    out = tmp_path / "prepared"
    prepare("isic_skin_lesion", str(copy), str(out))
    test_images = copy / "ISIC-2017_Test_v2_Data.zip"
    names = sorted(p.name for p in (raw / "ISIC-2017_Test_v2_Data").iterdir())
    kept = [n for n in names if n != [n for n in names if n.endswith(".jpg")][-1]]  # one test image fewer
    with zipfile.ZipFile(test_images, "w") as zf:
        for name in kept:
            zf.write(raw / "ISIC-2017_Test_v2_Data" / name, f"ISIC-2017_Test_v2_Data/{name}")
    before = len(load_datalist(out, "test"))
    prepare("isic_skin_lesion", str(copy), str(out))
    assert len(load_datalist(out, "test")) == before - 1  # the archive as it is now, not a stale copy
    assert sorted(p.name for p in (out / UNPACKED / "ISIC-2017_Test_v2_Data").rglob("*") if p.is_file()) == sorted(
        kept + [MARK])

    with zipfile.ZipFile(copy / "notes.zip", "w") as zf:
        zf.writestr("notes/readme.txt", "about the download")
    prepare("isic_skin_lesion", str(copy), str(out))
    assert (out / UNPACKED / "notes" / "readme.txt").is_file()
    (copy / "notes.zip").unlink()
    prepare("isic_skin_lesion", str(copy), str(out))
    assert not (out / UNPACKED / "notes").exists()  # unpacked from an archive no longer in RAW


def test_pranet_zips_unpack_one_level_and_a_left_partial_folder_is_replaced(tmp_path):
    raw = tmp_path / "raw"
    demo_data("polyp_seg", str(raw), num=8)
    download = tmp_path / "download"
    download.mkdir()
    for part in ("TrainDataset", "TestDataset"):
        _zip_folder(raw / part, download / f"{part}.zip", top=part)
    out = tmp_path / "prepared"
    (out / UNPACKED / ".TrainDataset.partial" / "images").mkdir(parents=True)  # a run stopped half-way
    prepare("polyp_seg", str(download), str(out))
    assert (out / UNPACKED / "TrainDataset" / "images").is_dir()  # TrainDataset.zip holds TrainDataset/: not twice
    assert not (out / UNPACKED / ".TrainDataset.partial").exists()
    prepare("polyp_seg", str(raw), str(tmp_path / "plain"))
    assert _names(out, "test") == _names(tmp_path / "plain", "test")


def test_one_tar_of_volumes(tmp_path):
    raw = tmp_path / "raw"
    demo_data("synapse_multiorgan", str(raw), num=4, layout="folders", shape=[24, 24, 8])
    archive = tmp_path / "Task09_Demo.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(raw, arcname="Task09_Demo")
    out = tmp_path / "prepared"
    prepare("synapse_multiorgan", str(archive), str(out))
    doc = json.loads((out / "datalist.json").read_text())
    assert doc["meta"]["archives"] == [str(archive.resolve())]
    images = [Path(item["image"]) for item in load_datalist(out, "training")]
    assert images and all(p.is_file() and (out / UNPACKED / "Task09_Demo") in p.parents for p in images)


def test_cut_short_rar_and_unsafe_archives_are_refused_by_name(isic_download, tmp_path):
    _, download = isic_download
    whole = (download / "ISIC-2017_Training_Data.zip").read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match=r"cut\.zip: cannot be unpacked .*cut short"):
        prepare("isic_skin_lesion", str(cut), str(tmp_path / "o1"))
    assert not [p for p in (tmp_path / "o1" / UNPACKED).iterdir()]  # nothing half-unpacked is left

    rar = tmp_path / "PH2Dataset.rar"
    rar.write_bytes(b"Rar!\x1a\x07\x00")
    with pytest.raises(InputError, match=r"PH2Dataset\.rar: a RAR archive.*unrar x PH2Dataset\.rar"):
        prepare("isic_skin_lesion", str(rar), str(tmp_path / "o2"))

    escape = tmp_path / "escape.tar"
    with tarfile.open(escape, "w") as tf:
        info = tarfile.TarInfo("../../outside.txt")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"hello"))
    with pytest.raises(InputError, match=r"escape\.tar: member '\.\./\.\./outside\.txt'"):
        prepare("polyp_seg", str(escape), str(tmp_path / "o3" / "deep"))
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "o3" / "outside.txt").exists()
    assert not list((tmp_path / "o3" / "deep" / UNPACKED).iterdir())  # nor anything else of it

    link = tmp_path / "link.tar"
    with tarfile.open(link, "w") as tf:
        info = tarfile.TarInfo("a/passwd")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(InputError, match=r"link\.tar: member 'a/passwd'"):
        prepare("polyp_seg", str(link), str(tmp_path / "o4"))

    evil_zip = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil_zip, "w") as zf:
        zf.writestr("../outside.txt", b"hello")
    with pytest.raises(InputError, match=r"evil\.zip: member .\.\./outside\.txt. points outside"):
        prepare("polyp_seg", str(evil_zip), str(tmp_path / "o5"))


def test_archives_beside_folders_are_left_packed_and_named(isic_download, tmp_path):
    _, download = isic_download
    raw = tmp_path / "half"
    raw.mkdir()
    shutil.copy2(download / "ISIC-2017_Training_Data.zip", raw)
    (raw / "ISIC-2017_Training_Part1_GroundTruth").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"(?s)also holds 1 archive\(s\) left packed "
                                                 r"\(ISIC-2017_Training_Data\.zip\)"):
        prepare("isic_skin_lesion", str(raw), str(tmp_path / "out"))
    assert not (tmp_path / "out" / UNPACKED).exists()


def test_out_is_neither_raw_nor_inside_it(isic_download, tmp_path):
    _, download = isic_download
    raw = tmp_path / "download"
    shutil.copytree(download, raw)
    with pytest.raises(InputError, match="the prepared folder \\(OUT\\) is the input folder"):
        prepare("isic_skin_lesion", str(raw), str(raw))
    with pytest.raises(InputError, match="the prepared folder \\(OUT\\) is inside the input folder"):
        prepare("isic_skin_lesion", str(raw), str(raw / "prepared"))
    assert sorted(os.listdir(raw)) == sorted(os.listdir(download))  # nothing written in RAW
