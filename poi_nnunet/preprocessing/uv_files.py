"""uv(w) target maps of preprocessed cases: ``<data folder>_uv/<case>_uv.npy`` beside nnU-Net's data folder.

Each file is one float16 array ``(D, *preprocessed shape)``: ``D`` uv channels (the configuration's
axes) over nnU-Net's 3-axis preprocessed array shape, so a 2D case's map is ``(2, 1, Y, X)``; NaN where
the map is undefined (:mod:`poi_nnunet.uv.targets`). Plain ``.npy`` so that a loader can memory-map it
and read only its patch; a sibling folder, not the data folder itself, because nnU-Net infers its
dataset class from the file endings there (as the POI files, :mod:`.poi_files`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import PathLike, PoiNnunetError

SUFFIX = "_uv.npy"
DTYPE = np.float16  # uv lies in [-1, 1]: float16 resolves it to 5e-4, half of float32's memory


def preprocessed_uv_file(data_folder: PathLike, case: str) -> Path:
    """``<data folder>_uv/<case>_uv.npy`` for nnU-Net's ``data_folder`` (``.../<data identifier>``)."""
    folder = Path(data_folder)
    return folder.with_name(folder.name + "_uv") / f"{case}{SUFFIX}"


def write_uv_map(path: PathLike, uv: np.ndarray) -> None:
    """Write ``uv`` ``(D, *shape)`` as float16, atomically (a reader never sees half a file)."""
    data = np.ascontiguousarray(uv, dtype=DTYPE)

    def write(target: Path) -> None:
        with open(target, "wb") as f:  # a file object: np.save would append .npy to the temporary name
            np.save(f, data)

    atomic_write(path, write)


def load_uv_map(path: PathLike, mmap: bool = True) -> np.ndarray:
    """The float16 map ``(D, *shape)`` of a ``_uv.npy`` file, memory-mapped read-only unless ``mmap`` is False."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise PoiNnunetError(f"{path}: no uv map; plan and preprocess again with poi_plan_and_preprocess "
                             "(only configurations whose plans have uv_templates get maps)") from None
    except (OSError, ValueError) as exc:
        raise PoiNnunetError(f"{path}: unreadable uv map ({exc})") from None
