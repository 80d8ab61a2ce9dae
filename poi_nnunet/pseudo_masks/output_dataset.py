"""The raw dataset ``poi_pseudo_masks`` writes: D's images with the pseudo masks as dense ``labelsTr``.

``Dataset<NEW>_<Name>PseudoMasks`` (``<Name>`` is D's name without its ``DatasetNNN_`` prefix) holds

* ``imagesTr/``: D's training images, hard-linked (copied where the file system cannot link), byte-identical;
* ``labelsTr/``: the fused, smoothed pseudo masks, on each image's grid;
* ``poisTr/``: D's, if D has them, less the points whose structure the case's pseudo mask lacks (the format
  requires it; they are listed in ``pseudo_masks.pois_left_out``);
* ``dataset.json``: D's, with ``labels`` lacking ``ignore`` (the masks are dense), ``numTraining`` counted, and
  a ``"pseudo_masks"`` block saying what it was made from and how (source dataset, fusion, smoothing radii,
  work folder, the Dice against D's dense references when there were any); D's ``click_annotation`` moves into
  that block (it describes D's clicks, not these labels).

It is built in a hidden sibling folder, validated (:func:`~poi_nnunet.raw_format_checks.validate_raw_dataset`)
and renamed into place (:func:`~poi_nnunet.atomic.staged_directory`), so a killed or failed run leaves none.

**Which id.** ``--output-id NEW`` when given. Otherwise a dataset already made from D with the same settings
(found by its ``pseudo_masks`` block) is reused, and failing that the first id after D's (D + 1, D + 2, ...,
wrapping round below 999) that no dataset uses in ``$nnUNet_raw``, ``$nnUNet_preprocessed`` or
``$nnUNet_results`` (nnU-Net refuses an id that names two datasets). Not D + 1000: this project's dataset
folders have three-digit ids (``raw_dataset.dataset_folder_name``). An existing dataset with the chosen id that
was not made from D with these settings is never overwritten: that is an error naming it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from ..atomic import atomic_write_text, staged_directory
from ..errors import InvalidInputError, PoiNnunetError
from ..pois import PoiSet, read_poi_file, write_poi_file
from ..raw_dataset import RawDataset, dataset_folder_name, raw_root
from ..raw_format_checks import validate_raw_dataset

PROVENANCE_KEY = "pseudo_masks"
NAME_SUFFIX = "PseudoMasks"
_FOLDER = re.compile(r"^Dataset(\d+)_(.+)$")
# settings that make two pseudo-mask datasets of one source the same dataset
_MATCHED = ("fusion", "closing_radius_mm", "opening_radius_mm")


@dataclass(frozen=True)
class OutputTarget:
    """Where the new dataset goes, and whether it is already there (made from the source with these settings)."""

    path: Path
    exists: bool


def dataset_id(folder_name: str) -> Optional[int]:
    match = _FOLDER.match(folder_name)
    return int(match.group(1)) if match else None


def source_name(ds: RawDataset) -> str:
    """``Dataset701_SpineClicks`` -> ``SpineClicks``."""
    match = _FOLDER.match(ds.path.name)
    return match.group(2) if match else ds.path.name


def choose_output(ds: RawDataset, output_id: Optional[int], settings: Mapping[str, Any]) -> OutputTarget:
    """The new dataset's folder (module docstring: which id); raises before any work if it would overwrite."""
    root = raw_root()
    own_id = dataset_id(ds.path.name)
    if output_id is not None:
        if own_id is not None and output_id == own_id:
            raise PoiNnunetError(f"--output-id {output_id} is the source dataset's own id")
        path = root / dataset_folder_name(int(output_id), source_name(ds) + NAME_SUFFIX)
        return _checked(ds, path, settings)
    ours = [p for p in _made_from(ds) if _matches(p, settings)]
    if ours:
        return OutputTarget(ours[0], True)
    used = _used_ids()
    start = own_id if own_id is not None else 0
    for candidate in list(range(start + 1, 1000)) + list(range(1, start)):
        if candidate not in used:
            return OutputTarget(root / dataset_folder_name(candidate, source_name(ds) + NAME_SUFFIX), False)
    raise PoiNnunetError("every dataset id 1-999 is taken; pass --output-id")


def _checked(ds: RawDataset, path: Path, settings: Mapping[str, Any]) -> OutputTarget:
    """An explicit id: fine if free, or if it holds this very dataset; an error otherwise."""
    wanted = dataset_id(path.name)
    same_id = sorted({p.name for root in _roots() for p in _dataset_folders(root) if dataset_id(p.name) == wanted})
    others = [n for n in same_id if n != path.name]
    if others:
        raise PoiNnunetError(f"--output-id {wanted}: id already used by {', '.join(others)}; refusing to write "
                             f"{path.name} beside it (nnU-Net needs one name per id); choose another id")
    if not path.exists():
        return OutputTarget(path, False)
    meta = _provenance(path)
    if meta is None or meta.get("source") != ds.path.name:
        raise PoiNnunetError(f"{path}: already exists and was not made by poi_pseudo_masks from {ds.path.name}; "
                             "refusing to overwrite it: choose another --output-id")
    if not _matches(path, settings):
        made = {k: meta.get(k) for k in _MATCHED}
        raise PoiNnunetError(f"{path}: already made from {ds.path.name} with other settings ({made}); delete it "
                             "or choose another --output-id")
    return OutputTarget(path, True)


def _roots() -> List[Path]:
    roots = [raw_root()]
    for variable in ("nnUNet_preprocessed", "nnUNet_results"):
        if os.environ.get(variable):
            roots.append(Path(os.environ[variable]))
    return roots


def _dataset_folders(root: Path) -> List[Path]:
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and _FOLDER.match(p.name)]


def _used_ids() -> set:
    return {dataset_id(p.name) for root in _roots() for p in _dataset_folders(root)}


def _provenance(path: Path) -> Optional[Dict[str, Any]]:
    try:
        meta = json.loads((path / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    block = meta.get(PROVENANCE_KEY) if isinstance(meta, dict) else None
    return block if isinstance(block, dict) else None


def _made_from(ds: RawDataset) -> List[Path]:
    """Raw datasets whose ``pseudo_masks`` block names ``ds`` as the source, by id."""
    found = [p for p in _dataset_folders(raw_root()) if (_provenance(p) or {}).get("source") == ds.path.name]
    return sorted(found, key=lambda p: dataset_id(p.name) or 0)


def _matches(path: Path, settings: Mapping[str, Any]) -> bool:
    meta = _provenance(path) or {}
    return all(meta.get(k) == settings.get(k) for k in _MATCHED)


def provenance(ds: RawDataset, settings: Mapping[str, Any], work: Path,
               dice_summary: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """The ``pseudo_masks`` block of the new dataset.json."""
    block: Dict[str, Any] = {"source": ds.path.name, **settings, "method": "seed 002: one point_sup 2d model per "
                             "slicing plane, fused, then morphologically smoothed", "work_folder": str(work)}
    if dice_summary is not None:
        block["dice_against_reference"] = dice_summary
    if "click_annotation" in ds.meta:
        block["source_click_annotation"] = ds.meta["click_annotation"]
    return block


def write_pseudo_mask_dataset(ds: RawDataset, target: Path, labels: Path, block: Mapping[str, Any],
                              progress: bool = True) -> None:
    """Write ``target`` (module docstring) from ``ds``'s images and the masks ``labels/<case><file_ending>``."""
    cases = ds.case_ids("Tr")
    missing = [c for c in cases if not (labels / f"{c}{ds.file_ending}").is_file()]
    if missing:
        raise PoiNnunetError(f"{labels}: no pseudo mask for {len(missing)} case(s), e.g. {missing[0]}")
    dropped: Dict[str, int] = {}
    with staged_directory(target) as staging:
        for case in tqdm(cases, desc="write dataset", unit="case", disable=not progress):
            copy_case(ds, case, staging, labels)
            lost = copy_pois(ds, case, staging)
            if lost:
                dropped[case] = lost
        if dropped:
            print(f"poisTr: {sum(dropped.values())} point(s) of {len(dropped)} case(s) left out: their structure is "
                  "missing from the case's pseudo mask (listed in dataset.json, pseudo_masks.pois_left_out)")
        meta = {k: v for k, v in ds.meta.items() if k != "click_annotation"}
        meta["labels"] = {k: v for k, v in ds.labels.items() if k != "ignore"}
        meta["numTraining"] = len(cases)
        meta[PROVENANCE_KEY] = {**block, **({"pois_left_out": dropped} if dropped else {})}
        atomic_write_text(staging / "dataset.json", json.dumps(meta, indent=2) + "\n")
        problems = validate_raw_dataset(staging, progress=False)
        if problems:
            raise InvalidInputError(problems, headline=f"the pseudo-mask dataset {target.name} would be invalid")


def copy_case(ds: RawDataset, case: str, staging: Path, labels: Path) -> None:
    """Link (or copy) one case's image channels and copy its pseudo mask into ``staging``."""
    images = staging / "imagesTr"
    images.mkdir(exist_ok=True)
    for source in ds.image_files(case):
        _link_or_copy(source, images / source.name)
    (staging / "labelsTr").mkdir(exist_ok=True)
    shutil.copy2(labels / f"{case}{ds.file_ending}", staging / "labelsTr" / f"{case}{ds.file_ending}")


def copy_pois(ds: RawDataset, case: str, staging: Path) -> int:
    """Copy the case's POI file, without the points whose structure the pseudo mask lacks (a plane model that
    missed a vertebra; the unified format requires a point's structure in its case's labels); return how many
    points were left out."""
    source = ds.poi_file(case)
    if not source.is_file():
        return 0
    pois = read_poi_file(source)
    # a copy, not a view: a view of an image nothing holds reads freed memory (it held labels the mask lacks)
    present = {int(v) for v in np.unique(sitk.GetArrayFromImage(
        sitk.ReadImage(str(staging / "labelsTr" / f"{case}{ds.file_ending}"))))}
    kept = [p for p in pois if p.structure == 0 or p.structure in present]
    write_poi_file(staging / "poisTr" / f"{case}.json", PoiSet(kept) if len(kept) < len(pois) else pois)
    return len(pois) - len(kept)


def _link_or_copy(source: Path, destination: Path) -> None:
    """A hard link costs no space; images are never written in place here (atomic writes replace the inode),
    so the two datasets cannot change each other."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)
