"""Every rule of the unified raw format (docs/format.md) and nnU-Net's own, checked at once.

The validator never stops at the first problem: it collects all of them, each
naming the file (and the point, for POI files), so a user fixes a dataset in
one pass. Both the converters (before publishing) and the planner (before
planning) run it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence, Set

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from .errors import InvalidInputError, PathLike, PoiNnunetError, Problem
from .geometry import ImageGeometry
from .pois import read_poi_file_lenient
from .raw_dataset import SPLITS, RawDataset, resolve_raw_dataset

REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")


def validate_raw_dataset(spec: PathLike, progress: bool = True) -> List[Problem]:
    """Return every problem of the dataset at ``spec`` (id, name or folder); empty when valid."""
    try:
        ds = RawDataset.open(spec)
    except PoiNnunetError as exc:
        return [Problem(str(spec), str(exc))]
    problems = _check_dataset_json(ds)
    if any(p.file == str(ds.dataset_json) and "fatal" in p.message for p in problems):
        return problems
    for split in SPLITS:
        problems += _check_split(ds, split, progress)
    return problems


def check_raw_dataset(spec: PathLike, progress: bool = True) -> RawDataset:
    """Open a dataset and raise :class:`InvalidInputError` with all problems if it is invalid."""
    path = resolve_raw_dataset(spec)
    problems = validate_raw_dataset(path, progress=progress)
    if problems:
        raise InvalidInputError(problems, headline=f"dataset {path} is invalid")
    return RawDataset.open(path)


# ---------------------------------------------------------------------------- dataset.json
def _check_dataset_json(ds: RawDataset) -> List[Problem]:
    f = str(ds.dataset_json)
    meta = ds.meta
    out: List[Problem] = []
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        return [Problem(f, f"fatal: missing required key(s) {missing}")]
    channels = meta["channel_names"]
    if not isinstance(channels, dict) or not channels:
        out.append(Problem(f, "fatal: 'channel_names' must be a non-empty object like {\"0\": \"CT\"}"))
    elif sorted(int(k) for k in channels if str(k).isdigit()) != list(range(len(channels))):
        out.append(Problem(f, f"fatal: 'channel_names' keys must be \"0\"..\"{len(channels) - 1}\", got {list(channels)}"))
    labels = meta["labels"]
    if not isinstance(labels, dict) or labels.get("background") != 0:
        out.append(Problem(f, "fatal: 'labels' must be an object with \"background\": 0"))
        return out
    not_values = {k: v for k, v in labels.items() if not (_is_label_value(v) or _is_region(v))}
    if not_values:
        out.append(Problem(f, f"fatal: 'labels' values must be integers >= 0 (or, for a region, a list of them), "
                              f"got {not_values}"))
        return out
    if "ignore" in labels and not _is_label_value(labels["ignore"]):
        out.append(Problem(f, "the 'ignore' label must be one integer, not a region (nnU-Net's rule)"))
    ints = {k: v for k, v in labels.items() if _is_label_value(v)}
    if len(set(ints.values())) != len(ints):
        out.append(Problem(f, "'labels' assigns one value to several names"))
    if "ignore" in labels and ints and labels["ignore"] != max(ints.values()):
        out.append(Problem(f, "the 'ignore' label must have the highest label value (nnU-Net's rule)"))
    out += _check_consecutive(f, ds.label_values())
    if not isinstance(meta["numTraining"], int):
        out.append(Problem(f, "'numTraining' must be an integer"))

    pois = meta.get("pois")
    if pois is not None:
        if not isinstance(pois, dict):
            out.append(Problem(f, "'pois' must be an object {\"<poi id>\": \"<name>\"}"))
        else:
            bad = [k for k in pois if not (isinstance(k, str) and k.isdigit() and int(k) > 0)]
            if bad:
                out.append(Problem(f, f"'pois' ids must be positive integers written as strings, got {bad}"))
    poi_ids = set(ds.poi_names) if isinstance(pois, dict) else set()
    out += _check_pairs(f, meta.get("poi_mirror_pairs"), "poi_mirror_pairs", poi_ids, "POI id")
    out += _check_pairs(f, meta.get("structure_mirror_pairs"), "structure_mirror_pairs", set(ds.label_values()), "label")
    return out


def _is_label_value(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_region(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(_is_label_value(x) for x in v)


def _check_consecutive(f: str, values: Sequence[int]) -> List[Problem]:
    """nnU-Net needs the declared values (region members and 'ignore' included) to be exactly 0..highest.

    Its planner accepts gaps, but training then indexes one output channel per
    value up to the highest and fails inside the loss, long after planning.
    """
    declared = set(values)
    missing = sorted(set(range(max(declared, default=0) + 1)) - declared)
    if not missing:
        return []
    first, verb = missing[0], "is" if len(missing) == 1 else "are"
    return [Problem(f, f"'labels' values must be consecutive integers from 0 (nnU-Net's rule; training fails "
                       f"otherwise), but {_ranges(missing)} {verb} missing below the highest value, {max(declared)}. "
                       f"Declare every value from 0 to the highest, values that no segmentation uses included "
                       f"(e.g. \"label_{first}\": {first}), as poi_convert's converters do")]


def _ranges(values: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``."""
    parts: List[str] = []
    start = prev = values[0]
    for v in list(values[1:]) + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(parts)


def _check_pairs(f: str, pairs: Any, key: str, known: Set[int], what: str) -> List[Problem]:
    if pairs is None:
        return []
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        return [Problem(f, f"'{key}' must be a list of [a, b] pairs")]
    out = []
    for a, b in pairs:
        for v in (a, b):
            if not isinstance(v, int) or v not in known:
                out.append(Problem(f, f"'{key}' names {v!r}, which is not a known {what}"))
    return out


# ---------------------------------------------------------------------------- cases
def _check_split(ds: RawDataset, split: str, progress: bool) -> List[Problem]:
    out: List[Problem] = []
    images_dir = ds.path / f"images{split}"
    labels_dir = ds.path / f"labels{split}"
    pois_dir = ds.path / f"pois{split}"
    if not images_dir.is_dir():
        if split == "Tr":
            out.append(Problem(str(images_dir), "missing: a dataset needs imagesTr/"))
        for d in (labels_dir, pois_dir):
            if d.is_dir():
                out.append(Problem(str(d), f"present without {images_dir.name}/"))
        return out

    cases = ds.case_ids(split)
    if split == "Tr" and ds.meta.get("numTraining") != len(cases):
        out.append(Problem(str(ds.dataset_json), f"'numTraining' is {ds.meta.get('numTraining')}, but imagesTr holds {len(cases)} case(s)"))
    if split == "Tr" and not labels_dir.is_dir() and len(ds.labels) > 1:
        out.append(Problem(str(labels_dir), "missing, but dataset.json declares labels other than background "
                           "(a landmark-only dataset has \"labels\": {\"background\": 0})"))
    if pois_dir.is_dir() and any(pois_dir.glob("*.json")) and "pois" not in ds.meta:
        out.append(Problem(str(ds.dataset_json), f"'pois' is required because {pois_dir.name}/ holds POI files"))

    case_set = set(cases)
    out += _orphans(images_dir, ds, case_set, split)
    if labels_dir.is_dir():
        out += [Problem(str(p), "label file without a matching image") for p in sorted(labels_dir.iterdir())
                if p.name.endswith(ds.file_ending) and p.name[: -len(ds.file_ending)] not in case_set]
    if pois_dir.is_dir():
        out += [Problem(str(p), "POI file without a matching image") for p in sorted(pois_dir.iterdir())
                if p.suffix == ".json" and p.stem not in case_set]
        out += [Problem(str(p), "unexpected file in a POI folder (only <case>.json)") for p in sorted(pois_dir.iterdir())
                if p.suffix != ".json"]

    iterator = tqdm(cases, desc=f"validating {split}", unit="case", disable=not progress, leave=False)
    for case in iterator:
        out += _check_case(ds, case, split, labels_dir.is_dir(), pois_dir.is_dir())
    return out


def _orphans(images_dir: Path, ds: RawDataset, cases: Set[str], split: str) -> List[Problem]:
    """Image files that do not follow <case>_XXXX<ending> or name a channel the dataset lacks."""
    out = []
    n = ds.num_channels
    for p in sorted(images_dir.iterdir()):
        name = p.name
        if not name.endswith(ds.file_ending):
            out.append(Problem(str(p), f"unexpected file: images must end in {ds.file_ending}"))
            continue
        stem = name[: -len(ds.file_ending)]
        case, _, channel = stem.rpartition("_")
        if not (channel.isdigit() and len(channel) == 4):
            out.append(Problem(str(p), "image name must be <case>_XXXX" + ds.file_ending))
        elif int(channel) >= n:
            out.append(Problem(str(p), f"channel {channel} not declared in channel_names (dataset has {n})"))
        elif case not in cases:
            out.append(Problem(str(p), f"channel file without the case's {case}_0000{ds.file_ending}"))
    return out


def _read_image(path: Path, out: List[Problem]) -> Optional[sitk.Image]:
    if not path.is_file():
        out.append(Problem(str(path), "missing"))
        return None
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        out.append(Problem(str(path), f"cannot read as an image ({last.strip()})"))
        return None


def _check_case(ds: RawDataset, case: str, split: str, with_labels: bool, with_pois: bool) -> List[Problem]:
    out: List[Problem] = []
    reference: Optional[ImageGeometry] = None
    for path in ds.image_files(case, split):
        image = _read_image(path, out)
        if image is None:
            continue
        geo = ImageGeometry.from_image(image)
        if image.GetNumberOfComponentsPerPixel() != 1:
            out.append(Problem(str(path), "multi-component (RGB/vector) image: nnU-Net needs one file per channel"))
        elif np.isnan(sitk.GetArrayViewFromImage(image)).any():
            out.append(Problem(str(path), "image contains NaN voxels"))
        if reference is None:
            reference = geo
        elif not reference.same_grid(geo):
            out.append(Problem(str(path), f"geometry differs from channel 0000: {reference.describe_difference(geo)}"))

    present_labels: Optional[Set[int]] = None
    if with_labels:
        label_path = ds.label_file(case, split)
        label = _read_image(label_path, out)
        if label is not None:
            geo = ImageGeometry.from_image(label)
            if reference is not None and not reference.same_grid(geo):
                out.append(Problem(str(label_path), f"geometry differs from the image: {reference.describe_difference(geo)}"))
            arr = sitk.GetArrayViewFromImage(label)
            if np.issubdtype(arr.dtype, np.floating) and not np.all(np.mod(arr, 1) == 0):
                out.append(Problem(str(label_path), "segmentation holds non-integer values"))
            present_labels = set(int(v) for v in np.unique(arr))
            unknown = sorted(present_labels - set(ds.label_values()))
            if unknown:
                out.append(Problem(str(label_path), f"label value(s) {unknown} not declared in dataset.json 'labels'"))

    poi_path = ds.poi_file(case, split)
    if with_pois and poi_path.is_file():
        out += _check_pois(ds, poi_path, reference, present_labels)
    return out


def _check_pois(ds: RawDataset, path: Path, geo: Optional[ImageGeometry], present: Optional[Set[int]]) -> List[Problem]:
    pois, out = read_poi_file_lenient(path)
    known_pois = ds.poi_names
    structure_labels = set(ds.label_values()) - {0}
    if ds.ignore_label is not None:
        structure_labels.discard(ds.ignore_label)
    # A sparse (point-annotated) mask labels a few voxels and hides the rest under 'ignore': a structure
    # it does not show may lie there, so its absence says nothing about the POI.
    hidden_by_ignore = present is not None and ds.ignore_label is not None and ds.ignore_label in present
    f = str(path)
    for p in pois:
        where = p.label()
        if p.poi not in known_pois:
            out.append(Problem(f, f"poi id {p.poi} is not in dataset.json 'pois'", where))
        if p.structure != 0:
            if p.structure not in structure_labels:
                out.append(Problem(f, f"structure {p.structure} is not a label of dataset.json 'labels'", where))
            elif present is not None and p.structure not in present and not hidden_by_ignore:
                out.append(Problem(f, f"structure {p.structure} does not occur in this case's segmentation", where))
        if geo is None:
            continue
        if len(p.position) != geo.dim:
            out.append(Problem(f, f"{len(p.position)} coordinates for a {geo.dim}D image", where))
            continue
        if not geo.contains_world(p.position):
            idx = np.round(geo.world_to_index(p.position), 2).tolist()
            out.append(Problem(f, f"position {list(p.position)} mm lies outside the image (continuous index {idx}, "
                                  f"size {list(geo.size)})", where))
    return out
