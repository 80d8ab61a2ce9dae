"""Run nnU-Net's writers into a hidden staging root; publish the results only when all succeeded.

nnU-Net writes straight into ``$nnUNet_preprocessed/<dataset>``, so a crash
would leave plans beside half a data folder. nnU-Net reads that variable each
time it builds a path (and spawned workers inherit it), so pointing it at a
sibling staging root for the duration keeps every write there.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import PoiNnunetError

ENV = "nnUNet_preprocessed"


def preprocessed_root() -> Path:
    value = os.environ.get(ENV)
    if not value:
        raise PoiNnunetError(f"{ENV} is not set: export {ENV}=/path/to/preprocessed (nnU-Net's preprocessed folder)")
    return Path(value)


def check_writable(root: Path) -> None:
    """Fail before any work when the output folder cannot be created or written."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".poi_write_probe_", dir=root)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or exc
        raise PoiNnunetError(f"{root}: the preprocessed output folder cannot be written ({reason})") from None


@contextlib.contextmanager
def staged_preprocessed(dataset_name: str) -> Iterator[Path]:
    """Yield ``<staging root>/<dataset_name>`` with ``$nnUNet_preprocessed`` pointing at the staging root.

    The staging root is removed afterwards, whatever happened; :func:`publish` moves finished items.
    """
    root = preprocessed_root()
    staging_root = Path(tempfile.mkdtemp(prefix=".poi_plan_", suffix=".incomplete", dir=root))
    staging = staging_root / dataset_name
    staging.mkdir()
    previous = os.environ[ENV]
    os.environ[ENV] = str(staging_root)
    try:
        yield staging
    finally:
        os.environ[ENV] = previous
        shutil.rmtree(staging_root, ignore_errors=True)


def publish(staging: Path, target: Path, names: Sequence[str]) -> None:
    """Move ``names`` from staging into ``target`` in order, each replacing an older version whole.

    Callers list data first and the plans file last, so plans never point at missing data.
    """
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        src, dst = staging / name, target / name
        if not src.exists():
            continue
        old = None
        if dst.exists():
            old = target / f".{name}.old-{os.getpid()}"
            os.replace(dst, old)
        os.replace(src, dst)
        if old is not None:
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
