"""Datasets as downloaded: ZIP and tar archives unpacked for ``prepare``.

Most datasets come as archives: ISIC's parts, PraNet's TrainDataset.zip and TestDataset.zip, Kvasir-SEG,
CVC-ClinicDB, BUSI, GlaS, ACDC, Synapse's RawData.zip and the Decathlon's tar files. ``prepare`` takes RAW as one
archive, or as a folder holding archives (and loose files such as ISIC's CSV tables) but no folders. Each archive is
unpacked into ``OUT/unpacked/<archive name>/`` and the import reads from there:

- the original download is never written to, and a later run reuses what it unpacked while the archive is unchanged
  (same size and modification time);
- an archive is unpacked into a hidden folder first and renamed when complete, so a run stopped half-way leaves
  nothing that a later run would take for a whole dataset;
- members that would land outside their folder (absolute names, ``..``, links out) are refused;
- a folder beside the archives means they were extracted already: RAW is read as it is then, and the archives are
  named only if the import finds nothing.

RAR and 7-Zip archives (PH2 comes as a ``.rar``) cannot be read with Python's standard library; they are named with
the command that extracts them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
import tarfile
import zipfile
from pathlib import Path

from vmunet_monai.validation import InputError

__all__ = ["ARCHIVE_SUFFIXES", "UNPACKED", "archive_stem", "unpack_dataset", "archives_left", "zip_member_problem"]

ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".txz", ".tar", ".zip")
UNREADABLE = {".rar": ("RAR", "unrar x {name}, or 7z x {name}"), ".7z": ("7-Zip", "7z x {name}")}
UNPACKED = "unpacked"
MARK = ".vmunet_monai_unpacked.json"


def archive_stem(path: str | os.PathLike) -> str | None:
    """The name of an archive without its suffix (``TrainDataset`` of ``TrainDataset.zip``); None for any other
    file (a ``.nii.gz`` volume is not an archive)."""
    name = Path(path).name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _unreadable(path: Path):
    return UNREADABLE.get(path.suffix.lower())


def _refuse_unreadable(path: Path) -> InputError:
    kind, command = _unreadable(path)
    return InputError(f"{path}: a {kind} archive, which Python cannot unpack (extract it first: "
                      f"{command.format(name=path.name)}; then give prepare the extracted folder as RAW)")


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX")


def _archives_in(raw: Path) -> tuple[list[Path], list[Path], list[Path], list[Path]]:
    """RAW's archives, unreadable archives, other files and folders."""
    archives, unreadable, files, folders = [], [], [], []
    for entry in _visible(raw):
        if entry.is_dir():
            folders.append(entry)
        elif archive_stem(entry):
            archives.append(entry)
        elif _unreadable(entry):
            unreadable.append(entry)
        elif entry.is_file():
            files.append(entry)
    return archives, unreadable, files, folders


def archives_left(raw: str | os.PathLike) -> list[Path]:
    """The archives in RAW that :func:`unpack_dataset` left packed because RAW also holds folders."""
    raw = Path(raw)
    if not raw.is_dir():
        return []
    archives, unreadable, _, folders = _archives_in(raw)
    return archives + unreadable if folders else []


def _stamp(archive: Path) -> dict:
    st = archive.stat()
    return {"archive": str(archive.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _progress(total: int, name: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"unpacking {name}", unit="B", unit_scale=True, mininterval=1.0)


def zip_member_problem(info: zipfile.ZipInfo, base: Path) -> str | None:
    """Why the member ``info`` may not be unpacked into the folder ``base`` (absolute, climbing out with ``..``,
    resolving outside it, or a symbolic link), or None when it may."""
    name = info.filename
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in name.replace("\\", "/").split("/"):
        return f"points outside {base}"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link"
    if not (base.resolve() / name).resolve().is_relative_to(base.resolve()):
        return f"resolves outside {base}"
    return None


def _unpack_zip(archive: Path, into: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.infolist() if not m.filename.startswith("__MACOSX/")]
        for member in members:  # all checked before anything is written
            problem = zip_member_problem(member, into)
            if problem:
                raise InputError(f"{archive}: member {member.filename!r} {problem} (members are unpacked below their "
                                 "archive's folder only, as regular files and folders)")
        with _progress(sum(m.file_size for m in members), archive.name) as bar:
            for member in members:
                zf.extract(member, into)
                bar.update(member.file_size)


def _extract_tar_member(tf: tarfile.TarFile, archive: Path, member: tarfile.TarInfo, into: Path) -> None:
    """Extract ``member``, refused when it would write outside ``into`` (Python's ``data`` filter where it has
    one)."""
    if hasattr(tarfile, "data_filter"):
        try:
            tf.extract(member, into, filter="data")
        except tarfile.FilterError as exc:
            raise InputError(f"{archive}: member {member.name!r} refused ({exc}; members are unpacked below their "
                             "archive's folder only, as regular files and folders)") from None
        return
    target = os.path.realpath(os.path.join(into, member.name))
    if not target.startswith(os.path.realpath(into) + os.sep) or member.issym() or member.islnk() or member.isdev():
        raise InputError(f"{archive}: member {member.name!r} would land outside the unpacked folder, or is a link or "
                         "a device (members are unpacked below their archive's folder only, as regular files and "
                         "folders)")
    tf.extract(member, into)


def _unpack_tar(archive: Path, into: Path) -> None:
    with open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r:*") as tf, \
            _progress(archive.stat().st_size, archive.name) as bar:
        for member in tf:
            if [part for part in member.name.split("/") if part not in ("", ".")][:1] == ["__MACOSX"]:
                continue  # macOS's resource forks, which its archiver adds
            _extract_tar_member(tf, archive, member, into)
            bar.update(raw.tell() - bar.n)


def _unpack(archive: Path, root: Path) -> tuple[Path, bool]:
    """Unpack ``archive`` into ``root/<stem>``, or reuse what an earlier run unpacked from it unchanged (then the
    second value is True)."""
    dest = root / archive_stem(archive)
    stamp = _stamp(archive)
    mark = dest / MARK
    if mark.is_file():
        try:
            if json.loads(mark.read_text()) == stamp:
                return dest, True
        except (OSError, ValueError):
            pass
    if dest.exists():
        if not mark.is_file():
            raise InputError(f"{dest}: exists and was not unpacked by prepare (it unpacks {archive.name} there; move "
                             "it away or choose another OUT)")
        shutil.rmtree(dest)  # unpacked from an earlier version of the archive
    partial = root / f".{dest.name}.partial"
    if partial.exists():
        shutil.rmtree(partial)  # left by a run that stopped half-way
    partial.mkdir(parents=True)
    try:
        if archive.name.lower().endswith(".zip"):
            _unpack_zip(archive, partial)
        else:
            _unpack_tar(archive, partial)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zipfile.LargeZipFile) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise InputError(f"{archive}: cannot be unpacked ({type(exc).__name__}: {exc}; an archive must be whole: "
                         "a download that stopped early is cut short, download it again)") from None
    except RuntimeError as exc:  # zipfile: "File ... is encrypted, password required for extraction"
        shutil.rmtree(partial, ignore_errors=True)
        raise InputError(f"{archive}: cannot be unpacked ({exc}; extract it yourself and give the folder as RAW)") \
            from None
    except InputError:  # a member refused: nothing of the archive stays
        shutil.rmtree(partial, ignore_errors=True)
        raise
    inside = _visible(partial)
    if len(inside) == 1 and inside[0].is_dir() and inside[0].name.lower() == dest.name.lower():
        wrapper, partial = partial, inside[0]  # TrainDataset.zip holding TrainDataset/: one level, not two
    else:
        wrapper = None
    (partial / MARK).write_text(json.dumps(stamp) + "\n")
    partial.rename(dest)
    if wrapper is not None:
        shutil.rmtree(wrapper)  # what is left: __MACOSX, hidden files
    return dest, False


def _unpack_all(archives: list[Path], root: Path) -> list[Path]:
    done = [_unpack(archive, root) for archive in archives]
    reused = sum(again for _, again in done)
    if reused:
        print(f"{reused} of {len(archives)} archive(s) unpacked already in {root}, unchanged since: reused",
              file=sys.stderr)
    return [dest for dest, _ in done]


def unpack_dataset(raw: str | os.PathLike, out: str | os.PathLike) -> tuple[str, list[Path]]:
    """The folder ``prepare`` imports from, and the archives unpacked for it.

    RAW itself when it is a folder without archives, or with folders beside them (extracted already). When RAW is
    an archive, ``OUT/unpacked/<name>``. When RAW is a folder of archives and loose files, ``OUT/unpacked``: each
    archive unpacked into a folder named after it, the loose files copied beside them.

    Raises:
        InputError: for a RAR or 7-Zip archive (with the command that extracts it), an archive that is cut short,
            encrypted or holds members that would land outside its folder.
    """
    raw_path = Path(os.path.expanduser(os.fspath(raw)))
    out_path = Path(os.path.abspath(os.path.expanduser(os.fspath(out))))
    root = out_path / UNPACKED
    if raw_path.is_file():
        if _unreadable(raw_path):
            raise _refuse_unreadable(raw_path)
        if archive_stem(raw_path) is None:
            return os.fspath(raw), []
        return str(_unpack_all([raw_path], root)[0]), [raw_path]
    if not raw_path.is_dir():  # the importer says what it expected
        return os.fspath(raw), []
    archives, unreadable, files, folders = _archives_in(raw_path)
    if folders or not (archives or unreadable):
        return os.fspath(raw), []
    if unreadable:
        raise _refuse_unreadable(unreadable[0])
    unpacked = _unpack_all(archives, root)
    for stale in _visible(root):
        if stale.is_dir() and (stale / MARK).is_file() and stale not in unpacked:
            shutil.rmtree(stale)  # unpacked from an archive no longer in RAW
    for file in files:
        copied = root / file.name
        if not copied.is_file() or copied.stat().st_size != file.stat().st_size:
            shutil.copy2(file, copied)
    return str(root), archives
