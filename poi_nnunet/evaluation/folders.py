"""Finding the cases, masks and names of a folder to evaluate.

Two layouts are understood:

* a raw dataset's split folder (``.../DatasetNNN_X/poisTs``): masks are the
  sibling ``labelsTs/<case><file_ending>`` and names come from ``dataset.json``
  one level up;
* a flat folder, as ``poi_predict`` writes it: ``<case>.json`` with an optional
  ``<case><file_ending>`` mask beside it (``.nii.gz`` unless a ``dataset.json``
  in the folder says otherwise, as nnU-Net's predictor leaves one there).

Files in a flat folder that are not point files (3D Slicer ``.mrk.json``,
nnU-Net's ``plans.json`` and the like) are skipped by name.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import PathLike, PoiNnunetError
from ..geometry import ImageGeometry
from ..raw_dataset import RawDataset

NOT_POI_FILES = frozenset({
    "dataset.json", "plans.json", "predict_from_raw_data_args.json", "summary.json",
    "dataset_fingerprint.json", "splits_final.json", "debug.json",
    "dropped_points.json",  # poi_predict's list of points it did not write (poi_nnunet.inference.drop_report)
})
_SPLIT_FOLDER = re.compile(r"^pois(Tr|Ts)$")


@dataclass
class EvaluationFolder:
    """The point files of one side (reference or prediction) and where its masks and names are."""

    path: Path
    poi_files: Dict[str, Path]
    mask_dir: Path
    mask_ending: str
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def cases(self) -> List[str]:
        return sorted(self.poi_files)

    def restricted_to(self, cases: Sequence[str]) -> "EvaluationFolder":
        """The same folder seen through a case list (a fold's validation cases out of all of poisTr)."""
        unknown = sorted(set(cases) - set(self.poi_files))
        if unknown:
            raise PoiNnunetError(f"{self.path}: no point file for case(s) {', '.join(unknown[:5])}")
        return replace(self, poi_files={c: self.poi_files[c] for c in cases})

    def mask_file(self, case: str) -> Optional[Path]:
        path = self.mask_dir / f"{case}{self.mask_ending}"
        return path if path.is_file() else None

    @property
    def poi_names(self) -> Dict[int, str]:
        return {int(k): str(v) for k, v in (self.meta.get("pois") or {}).items()}

    @property
    def label_names(self) -> Dict[int, str]:
        labels = self.meta.get("labels") or {}
        return {int(v): str(k) for k, v in labels.items() if isinstance(v, int) and not isinstance(v, bool)}

    @property
    def ignore_label(self) -> Optional[int]:
        value = (self.meta.get("labels") or {}).get("ignore")
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else None

    def declared_labels(self) -> List[int]:
        """Foreground labels that dataset.json names (background and ignore excepted)."""
        ignore = self.ignore_label
        return sorted(v for v in self.label_names if v != 0 and v != ignore)


def open_folder(path: PathLike, role: str) -> EvaluationFolder:
    """Recognise the layout of ``path`` and list its point files; ``role`` names the side in messages."""
    path = Path(path)
    if not path.is_dir():
        raise PoiNnunetError(f"{role} folder {path}: no such folder")
    split = _SPLIT_FOLDER.match(path.name)
    if split and (path.parent / "dataset.json").is_file():
        ds = RawDataset.open(path.parent)
        mask_dir, ending, meta = path.parent / f"labels{split.group(1)}", ds.file_ending, ds.meta
    else:
        meta = _read_meta(path / "dataset.json") if (path / "dataset.json").is_file() else {}
        mask_dir, ending = path, str(meta.get("file_ending", ".nii.gz"))
    files = {
        f.name[: -len(".json")]: f
        for f in sorted(path.iterdir())
        if f.is_file() and f.name.endswith(".json") and not f.name.endswith(".mrk.json")
        and f.name not in NOT_POI_FILES and not f.name.startswith(".")
    }
    return EvaluationFolder(path, files, mask_dir, ending, meta)


def read_mask(path: Path) -> Tuple[np.ndarray, ImageGeometry]:
    """A label map as an integer array (numpy axis order) and its geometry."""
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise PoiNnunetError(f"{path}: cannot read as an image ({str(exc).strip().splitlines()[-1]})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise PoiNnunetError(f"{path}: a label map must have one component per voxel")
    array = sitk.GetArrayFromImage(image)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise PoiNnunetError(f"{path}: segmentation holds non-integer values")
        array = array.astype(np.int32)
    if array.dtype.kind not in "iu":
        raise PoiNnunetError(f"{path}: unsupported voxel type {array.dtype} for a label map")
    if array.dtype.kind == "i" and array.size and array.min() < 0:
        raise PoiNnunetError(f"{path}: segmentation holds negative labels")
    return array, ImageGeometry.from_image(image)


def _read_meta(path: Path) -> Dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PoiNnunetError(f"{path}: cannot read dataset.json ({exc})") from None
    if not isinstance(meta, dict):
        raise PoiNnunetError(f"{path}: must hold a JSON object")
    return meta
