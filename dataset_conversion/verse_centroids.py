"""Convert VerSe vertebra centroid files (with their CT and optional vertebra mask) into the unified raw format.

Input: a folder searched recursively for centroid files (default glob *_ctd*.json).
The subject is the name before "_ctd", without a seg- entity, and its files are
found anywhere under the folder by name:

  <sub>_ctd.json or <sub>_seg-subreg_ctd.json   centroids        -> poisTr/<case>.json
  <sub>.nii.gz   or <sub>_ct.nii.gz             image            -> imagesTr/<case>_0000
  <sub>_seg.nii.gz or <sub>_seg-vert_msk.nii.gz vertebra mask    -> labelsTr/<case> (optional)

(VerSe 2019 and VerSe 2020 naming). A centroid file is
[{"direction": ["P", "I", "R"]}, {"label": 20, "X": .., "Y": .., "Z": ..}, ...]:
X, Y, Z are voxel coordinates of the image's own grid along the named axes
(X toward Posterior, Y toward Inferior, Z toward Right for P, I, R); flipping
an axis of n voxels maps voxel v to n - 1 - v, as TPTBox does.

What a label becomes:
  with masks (every subject has one): structure = the vertebra label, and one
    POI per vertebra with id --poi-id, default 50 "Vertebra_Corpus": TPTBox's
    Location for the vertebral body centre, which is also the Location TPTBox
    gives VerSe centroids when it loads them. A label written by TPTBox as
    location * 256 + vertebra keeps its Location id as the POI id.
  without masks (landmark-only dataset): structure 0 and POI id = the vertebra
    label (20 = "L1"), so each vertebra is its own landmark.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Set

from poi_nnunet.errors import InvalidInputError, Problem
from poi_nnunet.geometry import ImageGeometry
from poi_nnunet.raw_dataset_writer import CaseData, DatasetWriter

from ._common import add_cases
from ._images import read_image
from ._masks import read_mask
from ._output import add_output_arguments, output_folder
from ._point_checks import checked_pois, structures_missing_from_mask
from ._tptbox_names import left_right_pairs, location_name, structure_labels, structure_name
from ._verse_format import read_verse_centroids, split_label

HELP = "VerSe centroid files ([{\"direction\": [...]}, {\"label\", \"X\", \"Y\", \"Z\"}, ...]) with their images"

DEFAULT_POI_ID = 50  # TPTBox Location.Vertebra_Corpus
IMAGE_NAMES = ("{}.nii.gz", "{}_ct.nii.gz", "{}.nii", "{}_ct.nii")
MASK_NAMES = ("{}_seg.nii.gz", "{}_seg-vert_msk.nii.gz", "{}_seg.nii", "{}_seg-vert_msk.nii")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="folder holding images, masks and centroid files (searched recursively)")
    add_output_arguments(parser)
    parser.add_argument("--ctd-glob", default="*_ctd*.json", help="centroid file names (default: *_ctd*.json)")
    parser.add_argument("--poi-id", type=int, default=DEFAULT_POI_ID,
                        help=f"POI id of the centroids when masks are used (default: {DEFAULT_POI_ID}, "
                             "TPTBox's Location Vertebra_Corpus)")
    parser.add_argument("--poi-name", default=None, help="its name in dataset.json (default: TPTBox's Location name)")
    parser.add_argument("--no-masks", action="store_true",
                        help="ignore vertebra masks: a landmark-only dataset, one POI id per vertebra label")
    parser.add_argument("--channel-name", default="CT",
                        help="dataset.json name of the image channel (default: CT, normalised by CT statistics)")


@dataclass(frozen=True)
class VerseSubject:
    key: str
    centroids: Path
    image: Path
    mask: Optional[Path]


@dataclass
class _Seen:
    labels: Set[int] = field(default_factory=set)
    poi_ids: Set[int] = field(default_factory=set)


def run(args: argparse.Namespace) -> Path:
    if args.poi_id <= 0:
        raise InvalidInputError([Problem("--poi-id", f"must be a positive integer, got {args.poi_id}")],
                                headline="invalid option")
    subjects = find_verse_subjects(Path(args.input), args.ctd_glob)
    with_masks = _use_masks(subjects, args.no_masks)
    seen = _Seen()
    writer = DatasetWriter(output_folder(args), {"0": args.channel_name}, {"background": 0}, overwrite=args.overwrite)
    with writer:
        add_cases(writer, [(str(s.centroids), lambda s=s: convert_subject(s, with_masks, args.poi_id, seen))
                           for s in subjects])
        if with_masks:
            names = {i: (args.poi_name if i == args.poi_id and args.poi_name else location_name(i)) for i in seen.poi_ids}
            writer.labels = structure_labels(seen.labels)
        else:
            names = {i: structure_name(i) for i in seen.poi_ids}
        writer.pois = names
        pairs = left_right_pairs(names) if with_masks else []
        writer.extra = {"poi_source": "VerSe centroid files", **({"poi_mirror_pairs": pairs} if pairs else {})}
    return writer.target


def convert_subject(subject: VerseSubject, with_masks: bool, poi_id: int, seen: _Seen) -> CaseData:
    """One subject as a unified case; every problem names the user's file and the label."""
    image = read_image(subject.image, None)
    geometry = ImageGeometry.from_image(image)
    if geometry.dim != 3:
        raise InvalidInputError([Problem(str(subject.image), f"is {geometry.dim}D; VerSe centroids are 3D")],
                                headline=f"cannot convert {subject.key}")
    ctd = read_verse_centroids(subject.centroids)
    entries, problems = [], []
    for centroid, world in zip(ctd.centroids, ctd.world(geometry)):
        vertebra, location = split_label(centroid.label)
        if with_masks:
            entries.append((vertebra, location or poi_id, world))
        elif location is None:
            entries.append((0, centroid.label, world))
        else:
            problems.append(Problem(str(subject.centroids), "a combined (location * 256 + vertebra) label needs a "
                                                            "vertebra mask", f"label {centroid.label}"))
    if problems:
        raise InvalidInputError(problems, headline=f"cannot convert {subject.key}")
    describe = _describe_with_mask if with_masks else _describe_landmark
    pois = checked_pois(entries, geometry, subject.centroids, describe)
    label = None
    if with_masks:
        assert subject.mask is not None
        label, labels = read_mask(subject.mask, geometry, "vertebra mask")
        problems = structures_missing_from_mask(pois, labels, subject.centroids, subject.mask, describe)
        if problems:
            raise InvalidInputError(problems, headline=f"cannot convert {subject.key}")
        seen.labels |= labels
    seen.poi_ids |= {p.poi for p in pois}
    return CaseData(subject.key, [image], label, pois)


def find_verse_subjects(root: Path, ctd_glob: str = "*_ctd*.json") -> List[VerseSubject]:
    """Pair each centroid file with its image (and mask); a missing or ambiguous partner names the file."""
    if not root.is_dir():
        raise InvalidInputError([Problem(str(root), "input folder not found")], headline="cannot convert")
    by_name: Dict[str, List[Path]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        by_name.setdefault(path.name, []).append(path)
    problems: List[Problem] = []
    subjects: Dict[str, VerseSubject] = {}
    for ctd in sorted(p for p in root.rglob(ctd_glob) if p.is_file()):
        key = subject_of(ctd.name)
        if key in subjects:
            problems.append(Problem(str(ctd), f"second centroid file for subject {key!r} (the first is "
                                              f"{subjects[key].centroids}); narrow --ctd-glob"))
            continue
        image = _one(key, IMAGE_NAMES, by_name, ctd, "image", problems)
        mask = _one(key, MASK_NAMES, by_name, ctd, "vertebra mask", problems, required=False)
        if image is not None:
            subjects[key] = VerseSubject(key, ctd, image, mask)
    if not subjects and not problems:
        problems.append(Problem(str(root), f"no centroid file matching {ctd_glob!r} found (searched recursively)"))
    if problems:
        raise InvalidInputError(problems, headline=f"cannot pair the files under {root}")
    return list(subjects.values())


def subject_of(centroid_name: str) -> str:
    """``verse004_ctd.json`` -> ``verse004``; ``sub-verse004_seg-subreg_ctd.json`` -> ``sub-verse004``."""
    head = centroid_name.split("_ctd", 1)[0] if "_ctd" in centroid_name else centroid_name.rsplit(".", 1)[0]
    return "_".join(p for p in head.split("_") if not p.startswith("seg-"))


def _one(key: str, patterns, by_name: Dict[str, List[Path]], ctd: Path, what: str,
         problems: List[Problem], required: bool = True) -> Optional[Path]:
    found = [p for pattern in patterns for p in by_name.get(pattern.format(key), [])]
    if len(found) > 1:
        problems.append(Problem(str(ctd), f"several {what} files for subject {key!r}: {[str(p) for p in found]}"))
        return None
    if not found and required:
        names = " or ".join(p.format(key) for p in patterns)
        problems.append(Problem(str(ctd), f"no {what} for subject {key!r} (looked for {names})"))
    return found[0] if found else None


def _use_masks(subjects: List[VerseSubject], disabled: bool) -> bool:
    """Masks for every subject, or none: one dataset is either segmented or landmark-only."""
    if disabled:
        return False
    lacking = [s for s in subjects if s.mask is None]
    if len(lacking) == len(subjects):
        return False
    if lacking:
        raise InvalidInputError(
            [Problem(str(s.centroids), f"no vertebra mask for subject {s.key!r}, while other subjects have one")
             for s in lacking],
            headline="either every subject has a vertebra mask or none: add the missing masks or pass --no-masks")
    return True


def _describe_with_mask(structure: int, poi: int) -> str:
    return f"label {structure} ({structure_name(structure)}), poi {poi}"


def _describe_landmark(structure: int, poi: int) -> str:
    return f"label {poi} ({structure_name(poi)})"
