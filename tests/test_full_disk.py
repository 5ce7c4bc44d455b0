"""A full disk or a refused folder while results are written: the earlier file stays whole, no partial file is left,
and the message names the file and the space left (a full disk otherwise reads ``unexpected pos ...`` or names no
file at all)."""

from __future__ import annotations

import errno
import json
import pathlib
import re

import pytest


def _full_disk(monkeypatch, name: str) -> None:
    """``Path.write_text`` of a file called ``name`` writes half of the text and fails as a full disk does."""
    real = pathlib.Path.write_text

    def write_text(self, data, *args, **kwargs):
        if self.name == name:
            real(self, data[: len(data) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)


def test_write_whole_and_move_whole_keep_the_earlier_file(tmp_path, monkeypatch):
    from vmunet_monai.validation import NotWrittenError, move_whole, write_whole

    target = tmp_path / "datalist.json"
    write_whole(target, "earlier")
    assert target.read_text() == "earlier" and [p.name for p in tmp_path.iterdir()] == ["datalist.json"]
    with monkeypatch.context() as patch:
        _full_disk(patch, "datalist.json.partial")
        with pytest.raises(NotWrittenError) as failed:
            write_whole(target, "the new text, longer")
    assert target.read_text() == "earlier" and [p.name for p in tmp_path.iterdir()] == ["datalist.json"]
    assert failed.value.filename == str(target) and failed.value.errno == errno.ENOSPC
    assert re.fullmatch(rf"{re.escape(str(target))}: could not be written \(No space left on device; [0-9.]+ MiB free "
                        r"on its disk\); what stood there before is kept", str(failed.value))
    with pytest.raises(FileNotFoundError):  # a missing folder is named as it is
        write_whole(tmp_path / "no" / "file.json", "x")

    source = tmp_path / "scratch" / "new.bin"
    source.parent.mkdir()
    source.write_bytes(b"new" * 1000)
    move_whole(source, tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == b"new" * 1000 and not source.exists()


def test_prepare_onto_a_full_disk_keeps_the_earlier_datalist_and_names_it(tmp_path, monkeypatch, capsys):
    from vmunet_monai.cli import main

    main(["demo_data", "polyp_seg", str(tmp_path / "raw"), "--num", "12"])
    main(["prepare", "polyp_seg", str(tmp_path / "raw"), str(tmp_path / "prep")])
    datalist = tmp_path / "prep" / "datalist.json"
    earlier = datalist.read_text()
    capsys.readouterr()
    _full_disk(monkeypatch, "datalist.json.partial")
    with pytest.raises(SystemExit) as stop:
        main(["prepare", "polyp_seg", str(tmp_path / "raw"), str(tmp_path / "prep"), "--seed", "7"])
    assert stop.value.code == 1
    assert datalist.read_text() == earlier and json.loads(earlier)["training"]
    assert not list((tmp_path / "prep").glob("*.partial"))
    assert re.match(rf"error: {re.escape(str(datalist))}: could not be written \(No space left on device; ",
                    capsys.readouterr().err.strip().splitlines()[-1])


def test_what_could_not_be_written_is_the_last_line_of_a_bundle_run(tmp_path):
    """A bundle run ends in MONAI's "Failed to evaluate ...": the file not written, or the folder refused, is added
    as the last line; torch.save's full-disk error of MONAI's own checkpoint saver names the checkpoint folder."""
    from vmunet_monai.engine.handlers import _unwritten
    from vmunet_monai.validation import last_line_for, not_written

    def wrapped(cause):
        exc = RuntimeError("Failed to evaluate ConfigExpression: \"$__local_refs['train::trainer'].run()\"")
        exc.__cause__ = cause
        return exc

    refused = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "models" / ".training.lock"))
    assert str(last_line_for(wrapped(refused))) == (f"{tmp_path / 'models' / '.training.lock'}: permission denied (the "
                                                    "folders written to must be writable, the files read readable)")
    full = not_written(RuntimeError("unexpected pos 10 vs 8"), tmp_path / "model.pt")
    assert last_line_for(wrapped(full)) is full
    assert _unwritten(full, tmp_path) == str(full)
    assert re.fullmatch(rf"a file could not be written into {re.escape(str(tmp_path))} \([0-9.]+ MiB free there\)",
                        _unwritten(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 3 vs 2"),
                                   tmp_path))
    assert _unwritten(RuntimeError("shapes differ"), tmp_path) is None


def test_a_full_disk_under_predict_ends_in_one_line_with_the_way_on(tmp_path, monkeypatch, capsys):
    """MONAI's writers fail with ``[Errno 28]`` inside "Failed to evaluate ...": the command ends with the file, the
    space left and how ``--resume`` goes on, not a traceback; other errors keep their traceback."""
    from vmunet_monai.cli import Commands, main

    target = tmp_path / "out" / "masks" / "a_mask.png"

    def full(self, *args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        except OSError as exc:
            raise RuntimeError("Failed to evaluate ConfigExpression: \"$__local_refs['evaluator'].run()\"") from exc

    monkeypatch.setattr(Commands, "predict", full)
    with pytest.raises(SystemExit) as stop:
        main(["predict", "B", "IN", "OUT"])
    assert stop.value.code == 1
    assert re.fullmatch(rf"error: {re.escape(str(target))}: could not be written \(No space left on device; [0-9.]+ "
                        r"MiB free on its disk\); what it wrote is kept, and the same command with --resume keeps it "
                        r"and does the rest", capsys.readouterr().err.strip())

    def broken(self, *args, **kwargs):
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(Commands, "predict", broken)
    with pytest.raises(RuntimeError, match="a bug of ours"):
        main(["predict", "B", "IN", "OUT"])


@pytest.mark.parametrize("codes, failing_save", [(1, 1), (0, 1), (0, 2)])
def test_a_ct_segmentation_stopped_while_written_leaves_the_earlier_one_whole(tmp_path, monkeypatch, codes,
                                                                              failing_save):
    """CT predict's writer writes ``<case>_seg.nii.gz`` through a partial file and a rename: a run stopped while it
    writes (Ctrl-C, a full disk), in MONAI's save or in the second save that takes the orientation off a scan whose
    header held none, leaves the earlier segmentation whole and nothing half-written, where ``score`` and
    ``--resume`` would read it."""
    import nibabel as nib
    import numpy as np
    import torch
    from monai.data import MetaTensor

    from vmunet_monai.engine import SaveSegmentationd, case_name_formatter

    save = SaveSegmentationd("pred", output_dir=str(tmp_path), output_postfix="seg", output_ext=".nii.gz",
                             output_dtype=np.uint8, resample=False, separate_folder=False,
                             output_name_formatter=case_name_formatter, print_log=False)
    affine = torch.diag(torch.tensor([0.8, 0.8, 3.0, 1.0], dtype=torch.float64))

    def segmentation(value, codes):
        meta = {"filename_or_obj": str(tmp_path / "case7.nii.gz"), "qform_code": codes, "sform_code": codes}
        return {"pred": MetaTensor(torch.full((1, 6, 5, 4), value), affine=affine, meta=meta)}

    target = tmp_path / "case7_seg.nii.gz"
    save(segmentation(3, codes))
    assert [p.name for p in tmp_path.iterdir()] == [target.name] and np.all(np.asarray(nib.load(target).dataobj) == 3)
    real, calls = nib.save, []

    def stopped(image, filename):
        calls.append(filename)
        if len(calls) < failing_save:
            return real(image, filename)
        pathlib.Path(filename).write_bytes(b"\x1f\x8b half a file")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(nib, "save", stopped)
        with pytest.raises(KeyboardInterrupt):
            save(segmentation(5, codes))
    assert len(calls) == failing_save and all(str(c).endswith(".partial.nii.gz") for c in calls)
    assert [p.name for p in tmp_path.iterdir()] == [target.name] and np.all(np.asarray(nib.load(target).dataobj) == 3)
    save(segmentation(5, codes))
    written = nib.load(target)
    assert np.all(np.asarray(written.dataobj) == 5) and written.shape == (6, 5, 4)
    orientation = (int(written.header["qform_code"]), int(written.header["sform_code"]))
    assert (orientation == (0, 0)) == (codes == 0), orientation
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
