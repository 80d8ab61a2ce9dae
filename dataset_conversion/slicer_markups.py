"""Convert 3D Slicer markups (.mrk.json or .fcsv) with their images into a dataset.

INPUT holds, per case, ``<case>.mrk.json`` or ``<case>.fcsv``, the image
``<case>.nii.gz`` (or .nii, .nrrd, .mha, .mhd; PNG/JPEG with --spacing) and
optionally a mask ``<case>_seg.nii.gz``. Every markups file is one case;
images without one are reported and left out.

Which POI a control point is:

* If the descriptions carry this project's encoding ("structure S, poi P",
  as poi_predict writes it), S and P are used as they are, so predictions
  corrected in Slicer convert back to the same ids. Then every point must
  carry it.
* Otherwise the distinct control-point labels over all files, in natural
  order (L2 before L10), are POI ids 1..N with the labels as names, and the
  structure is 0. A label used twice in one file is an error.

With masks (all cases or none), labelsTr holds them and dataset.json names
each value 1..highest found "structure_<value>" (nnU-Net wants consecutive
labels; values keep their meaning as structure ids); without, the dataset is
landmark-only. A prediction's confidence is dropped: converted points are
references. Points must lie inside their image; Slicer's positions are
already world mm, read in LPS whatever the file's coordinate system. For a 2D
image Slicer shows one slice at z = 0, so z must lie within half a unit of it
and is dropped.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import SimpleITK as sitk

from poi_nnunet.errors import InvalidInputError, Problem
from poi_nnunet.geometry import ImageGeometry
from poi_nnunet.markups import MarkupPoint, read_markups
from poi_nnunet.pois import Poi, PoiSet
from poi_nnunet.raw_dataset_writer import CaseData

from ._common import add_common_arguments, case_ids, fail, poi_ids_from_labels, raise_if, world_inside, write_dataset
from ._images import IMAGE_SUFFIXES, Spacing, parse_spacing, read_image, strip_image_suffix

HELP = "3D Slicer markups (.mrk.json, .fcsv) beside their images, optional <case>_seg masks"

MARKUPS_SUFFIXES = (".mrk.json", ".fcsv")
MASK_TAG = "_seg"


@dataclass
class SlicerCase:
    markups: Path
    image: Path
    mask: Optional[Path]
    points: List[MarkupPoint]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="folder with <case>.mrk.json/.fcsv, <case> image, <case>_seg mask")
    parser.add_argument("--resample-masks", action="store_true",
                        help="resample a mask whose grid differs from its image onto the image (nearest "
                             "neighbour), e.g. a segmentation Slicer exported cropped; otherwise an error")
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> Path:
    spacing = parse_spacing(args.spacing)
    cases = find_cases(Path(args.input))
    with_masks = _masks_all_or_none(cases)
    encoded = any("poi" in p.extra for c in cases for p in c.points)
    ids, names = _encoded_ids(cases) if encoded else _label_ids(cases)
    case_names = case_ids({str(c.markups): _stem(c.markups) for c in cases})
    found: Set[int] = set()
    loaders = [(str(c.markups), lambda c=c: _case(c, case_names[str(c.markups)], ids, spacing, args.resample_masks,
                                                  found)) for c in cases]
    labels = (lambda: _labels(found)) if with_masks else None
    writer = write_dataset(args, loaders, names, poi_source=f"3D Slicer markups from {args.input}", labels=labels)
    return writer.target


def _labels(found: Set[int]) -> Dict[str, int]:
    """Every value up to the highest in any mask: consecutive, as nnU-Net requires."""
    return {"background": 0, **{f"structure_{v}": v for v in range(1, max(found, default=0) + 1)}}


# ---------------------------------------------------------------------------- finding cases
def _stem(path: Path) -> str:
    name = path.name
    return next(name[: -len(s)] for s in MARKUPS_SUFFIXES if name.lower().endswith(s))


def find_cases(folder: Path) -> List[SlicerCase]:
    """Pair each markups file with its image and mask; read its points. All problems at once."""
    if not folder.is_dir():
        raise fail(folder, "no such folder")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    markups = [p for p in files if p.name.lower().endswith(MARKUPS_SUFFIXES)]
    images: Dict[str, List[Path]] = {}
    for p in files:
        stem = strip_image_suffix(p)
        if stem is not None:
            images.setdefault(stem, []).append(p)
    if not markups:
        raise fail(folder, "no .mrk.json or .fcsv files found")
    cases, problems = [], []
    stems = [_stem(m) for m in markups]
    for m, stem in zip(markups, stems):
        if stems.count(stem) > 1:
            problems.append(Problem(str(m), f"case {stem!r} has both a .mrk.json and a .fcsv file; keep one"))
            continue
        candidates = images.get(stem, [])
        masks = images.get(stem + MASK_TAG, [])
        if len(candidates) != 1 or len(masks) > 1:
            what = "image" if len(candidates) != 1 else "mask"
            found = candidates if what == "image" else masks
            expected = f"{stem}{MASK_TAG if what == 'mask' else ''}" + "{" + ",".join(IMAGE_SUFFIXES) + "}"
            problems.append(Problem(str(m), f"expected one {what} {expected} beside it, found "
                                            f"{[p.name for p in found] or 'none'}"))
            continue
        try:
            points = read_markups(m)
        except InvalidInputError as exc:
            problems += exc.problems
            continue
        cases.append(SlicerCase(m, candidates[0], masks[0] if masks else None, points))
    raise_if(problems, f"cannot convert Slicer markups in {folder}")
    unused = sorted(stem for stem in images if stem not in stems and not
                    (stem.endswith(MASK_TAG) and stem[: -len(MASK_TAG)] in stems))
    if unused:
        print(f"note: no markups file for {len(unused)} image(s), not converted: {', '.join(unused)}", file=sys.stderr)
    return cases


def _masks_all_or_none(cases: List[SlicerCase]) -> bool:
    with_mask = [c for c in cases if c.mask is not None]
    if with_mask and len(with_mask) != len(cases):
        raise InvalidInputError([Problem(str(c.markups), f"no mask <case>{MASK_TAG} beside it, but other cases have one "
                                                         "(nnU-Net needs a mask for every case or none)")
                                 for c in cases if c.mask is None], headline="masks for only some cases")
    return bool(with_mask)


# ---------------------------------------------------------------------------- POI ids
def _label_ids(cases: List[SlicerCase]) -> Tuple[Dict[str, int], Dict[int, str]]:
    """Distinct labels -> POI ids 1..N, and the names dataset.json gets."""
    problems = []
    for c in cases:
        seen: Set[str] = set()
        for p in c.points:
            if not p.label:
                problems.append(Problem(str(c.markups), "control point without a label", f"at {list(p.position)}"))
            elif p.label in seen:
                problems.append(Problem(str(c.markups), "label used by more than one control point", repr(p.label)))
            seen.add(p.label)
    raise_if(problems, "cannot assign POI ids from control-point labels")
    by_label = poi_ids_from_labels(p.label for c in cases for p in c.points)
    if not by_label:
        raise fail(cases[0].markups.parent, "no placed control points in any markups file")
    return by_label, {i: label for label, i in by_label.items()}


def _encoded_ids(cases: List[SlicerCase]) -> Tuple[Dict[str, int], Dict[int, str]]:
    """Ids straight from 'structure S, poi P'; names from the first label seen for each id."""
    problems, names = [], {}
    for c in cases:
        missing = [p.label or "(no label)" for p in c.points if "poi" not in p.extra]
        if missing:
            problems.append(Problem(str(c.markups), f"{len(missing)} control point(s) lack the description "
                                    f"'structure S, poi P' that other points carry: {missing}"))
        bad = [p.extra["poi"] for p in c.points if p.extra.get("poi") == 0]
        if bad:
            problems.append(Problem(str(c.markups), "poi id 0 in a description; POI ids start at 1"))
        for p in c.points:
            if p.extra.get("poi"):
                names.setdefault(p.extra["poi"], p.label or f"POI {p.extra['poi']}")
    raise_if(problems, "cannot read POI ids from markups descriptions")
    return {}, dict(sorted(names.items()))


def _point_key(p: MarkupPoint, ids: Dict[str, int]) -> Tuple[int, int]:
    """(structure, poi) of a control point under the chosen id scheme."""
    if "poi" in p.extra:
        return int(p.extra["structure"]), int(p.extra["poi"])
    return 0, ids[p.label]


# ---------------------------------------------------------------------------- one case
def _case(c: SlicerCase, case_id: str, ids: Dict[str, int], spacing: Spacing,
          resample: bool, found: Set[int]) -> CaseData:
    image = read_image(c.image, spacing)
    geo = ImageGeometry.from_image(image)
    mask = _mask(c, image, resample) if c.mask is not None else None
    present = set(int(v) for v in np.unique(sitk.GetArrayViewFromImage(mask))) if mask is not None else set()
    found.update(present)
    pois, problems = [], []
    for p in c.points:
        structure, poi = _point_key(p, ids)
        where = f"{p.label!r} (structure {structure}, poi {poi})"
        position = list(p.position)
        if geo.dim == 2:
            if abs(position[2]) > 0.5:
                problems.append(Problem(str(c.markups), f"z = {position[2]} is off the 2D image's plane z = 0", where))
                continue
            position = position[:2]
        if structure != 0 and structure not in present:
            why = "does not occur in the mask" if mask is not None else f"needs a mask {case_id}{MASK_TAG}"
            problems.append(Problem(str(c.markups), f"structure {structure} {why}", where))
            continue
        try:
            pois.append(Poi(structure, poi, world_inside(geo, position, c.markups, where)))
        except InvalidInputError as exc:
            problems += exc.problems
    keys = [p.key for p in pois]
    problems += [Problem(str(c.markups), "more than one control point", f"structure {s}, poi {q}")
                 for s, q in sorted(set(k for k in keys if keys.count(k) > 1))]
    raise_if(problems, f"cannot convert {c.markups}")
    return CaseData(case_id, [image], mask, PoiSet(sorted(pois, key=lambda p: p.key)))


def _mask(c: SlicerCase, image: sitk.Image, resample: bool) -> sitk.Image:
    try:
        mask = sitk.ReadImage(str(c.mask))
    except RuntimeError as exc:
        raise fail(c.mask, f"cannot read as an image ({str(exc).strip().splitlines()[-1]})") from None
    geo, ref = ImageGeometry.from_image(mask), ImageGeometry.from_image(image)
    if mask.GetNumberOfComponentsPerPixel() != 1 or geo.dim != ref.dim:
        raise fail(c.mask, f"must be a single-component {ref.dim}D label image like its image {c.image.name}")
    if not ref.same_grid(geo):
        if not resample:
            raise fail(c.mask, f"grid differs from its image {c.image.name} ({ref.describe_difference(geo)}); "
                               "pass --resample-masks to resample it onto the image")
        mask = sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())
    values = sitk.GetArrayFromImage(mask)
    if values.size and (values.min() < 0 or not np.all(np.mod(values, 1) == 0)):
        raise fail(c.mask, "labels must be non-negative integers")
    top = values.max(initial=0)
    out = sitk.GetImageFromArray(values.astype(np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.uint32))
    out.CopyInformation(image)
    return out
