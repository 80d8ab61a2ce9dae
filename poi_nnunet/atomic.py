"""Writes that never leave a half-finished file or folder behind.

A file is written under a temporary name in its destination folder and renamed
into place (``os.replace`` is atomic on one file system). A folder is built in a
sibling temporary folder and renamed at the end; if anything fails the
temporary folder is removed and any earlier version is left untouched.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import SimpleITK as sitk

from .errors import PathLike, PoiNnunetError


def _tmp_name(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    return Path(name)


def _default_mode() -> int:
    """The mode a plain ``open()`` would give (mkstemp's 0600 would hide results from other users)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: PathLike, write: Callable[[Path], None], suffix_hint: str = "") -> None:
    """Call ``write(tmp_path)`` and rename the result to ``path``.

    ``suffix_hint`` is appended to the temporary name for writers (like ITK's)
    that choose the file format from the extension.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    target_tmp = tmp.with_name(tmp.name + suffix_hint) if suffix_hint else tmp
    try:
        write(target_tmp)
        os.chmod(target_tmp, _default_mode())
        os.replace(target_tmp, path)
    finally:
        for leftover in {tmp, target_tmp}:
            if leftover.exists():
                leftover.unlink()


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def image_suffix(path: PathLike) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".tif", ".tiff"):
        if name.endswith(ext):
            return ext
    return Path(path).suffix


def atomic_write_image(path: PathLike, image: sitk.Image, compress: bool = True) -> None:
    atomic_write(path, lambda p: sitk.WriteImage(image, str(p), compress), suffix_hint=image_suffix(path))


@contextlib.contextmanager
def staged_directory(target: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``target`` only if the block succeeds.

    With ``overwrite`` an existing ``target`` is replaced, but only after the new
    one is complete; without it an existing ``target`` is an error before any work.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise PoiNnunetError(f"{target}: already exists; choose another name or pass --overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".incomplete", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
