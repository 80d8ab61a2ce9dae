"""Finding the cases, masks and names of a folder to evaluate.

Four layouts are understood:

* a raw dataset's point split folder (``.../DatasetNNN_X/poisTs`` or
  ``poisTr``): point files are ``<case>.json`` there, masks are the sibling
  ``labelsTs/<case><file_ending>`` and names come from ``dataset.json`` one
  level up;
* a raw dataset's label folder (``labelsTs``, ``labelsTr`` or the dense
  references ``labelsTr_reference`` that ``poi_convert clicks`` keeps):
  masks only, names (and the ignore label) from ``dataset.json`` one level up;
* a flat folder, as ``poi_predict`` writes it: ``<case>.json`` point files
  and/or ``<case><file_ending>`` masks (``.nii.gz`` unless a ``dataset.json``
  in the folder says otherwise, as nnU-Net's predictor leaves one there). A
  segmentation-only model (``-tr point_sup``, ``-tr nnunet``) writes masks
  only; a folder of reference masks is the same layout.

The cases of a folder are its point files when it has any (masks are then
looked up beside them), else its masks. Files in a flat folder that are not
point files (3D Slicer ``.mrk.json``, nnU-Net's ``plans.json`` and the like)
are skipped by name.
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
from ..raw_dataset import DENSE_REFERENCE_FOLDER, RawDataset

NOT_POI_FILES = frozenset({
    "dataset.json", "plans.json", "predict_from_raw_data_args.json", "summary.json",
    "dataset_fingerprint.json", "splits_final.json", "debug.json",
    "dropped_points.json",  # poi_predict's list of points it did not write (poi_nnunet.inference.drop_report)
})
_SPLIT_FOLDER = re.compile(r"^pois(Tr|Ts)$")
_LABEL_FOLDERS = frozenset({"labelsTr", "labelsTs", DENSE_REFERENCE_FOLDER})


@dataclass
class EvaluationFolder:
    """The point files and masks of one side (reference or prediction), and its names.

    ``poi_files`` and ``mask_files`` map a case name to its file; either may
    be empty (a landmark-only folder has no masks, a segmentation-only
    prediction or a label folder has no point files). ``mask_dir`` and
    ``mask_ending`` say where masks were looked for, for messages.
    """

    path: Path
    poi_files: Dict[str, Path]
    mask_dir: Path
    mask_ending: str
    meta: Dict[str, Any] = field(default_factory=dict)
    mask_files: Dict[str, Path] = field(default_factory=dict)
    image_dir: Optional[Path] = None  # a raw split's imagesTr/imagesTs, beside its poisTr/poisTs

    @property
    def cases(self) -> List[str]:
        """The point-file cases where there are point files, else the mask cases."""
        return sorted(self.poi_files) if self.poi_files else sorted(self.mask_files)

    @property
    def has_anything(self) -> bool:
        return bool(self.poi_files or self.mask_files)

    def restricted_to(self, cases: Sequence[str]) -> "EvaluationFolder":
        """The same folder seen through a case list (a fold's validation cases out of all of poisTr,
        or out of all of labelsTr_reference)."""
        unknown = sorted(set(cases) - set(self.cases))
        if unknown:
            what = "point file" if self.poi_files else f"mask (<case>{self.mask_ending})"
            raise PoiNnunetError(f"{self.path}: no {what} for case(s) {', '.join(unknown[:5])}")
        wanted = set(cases)
        return replace(self, poi_files={c: p for c, p in self.poi_files.items() if c in wanted},
                       mask_files={c: p for c, p in self.mask_files.items() if c in wanted})

    def mask_file(self, case: str) -> Optional[Path]:
        return self.mask_files.get(case)

    def grid_file(self, case: str) -> Optional[Path]:
        """The image whose voxels measure this case's point errors: its mask, else (raw split) its first
        image channel; None where neither exists."""
        if case in self.mask_files:
            return self.mask_files[case]
        if self.image_dir is not None:
            image = self.image_dir / f"{case}_0000{self.mask_ending}"
            if image.is_file():
                return image
        return None

    def describe_masks(self) -> str:
        """Where this side's masks are looked for, e.g. ``<case>.nii.gz in .../labelsTs``."""
        return f"<case>{self.mask_ending} in {self.mask_dir}"

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
    """Recognise the layout of ``path`` and list its point files and masks; ``role`` names the side in messages."""
    path = Path(path)
    if not path.is_dir():
        raise PoiNnunetError(f"{role} folder {path}: no such folder")
    split = _SPLIT_FOLDER.match(path.name)
    in_raw_dataset = (path.parent / "dataset.json").is_file()
    masks_only = path.name in _LABEL_FOLDERS and in_raw_dataset
    if split and in_raw_dataset:
        ds = RawDataset.open(path.parent)
        mask_dir, ending, meta = path.parent / f"labels{split.group(1)}", ds.file_ending, ds.meta
        image_dir: Optional[Path] = path.parent / f"images{split.group(1)}"
    elif masks_only:
        ds = RawDataset.open(path.parent)
        mask_dir, ending, meta = path, ds.file_ending, ds.meta
        image_dir = None
    else:
        if (path / "dataset.json").is_file() and (path / "imagesTr").is_dir():
            raise PoiNnunetError(
                f"{role} folder {path} is a raw dataset: pass one of its folders instead "
                f"(poisTs or poisTr for points and masks, labelsTs or {DENSE_REFERENCE_FOLDER} for masks only)")
        meta = _read_meta(path / "dataset.json") if (path / "dataset.json").is_file() else {}
        mask_dir, ending = path, str(meta.get("file_ending", ".nii.gz"))
        image_dir = None
    poi_files = {} if masks_only else {
        f.name[: -len(".json")]: f
        for f in sorted(path.iterdir())
        if f.is_file() and f.name.endswith(".json") and not f.name.endswith(".mrk.json")
        and f.name not in NOT_POI_FILES and not f.name.startswith(".")
    }
    return EvaluationFolder(path, poi_files, mask_dir, ending, meta, _list_masks(mask_dir, ending), image_dir)


def _list_masks(folder: Path, ending: str) -> Dict[str, Path]:
    """``{case: file}`` of every ``<case><ending>`` file in ``folder`` (none when it does not exist)."""
    if not folder.is_dir():
        return {}
    return {
        f.name[: -len(ending)]: f
        for f in sorted(folder.iterdir())
        if f.is_file() and f.name.endswith(ending) and len(f.name) > len(ending) and not f.name.startswith(".")
    }


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
