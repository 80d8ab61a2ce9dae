"""Convert TPTBox spine data (image, vertebra mask, optional subregion mask, POI file) into the unified raw format.

Input: a folder searched recursively for, per subject (defaults, see the globs):

  *_ct.nii.gz                 the image                      -> imagesTr/<case>_0000
  *_seg-subreg*_msk.nii.gz    subregion mask (optional)      -> imagesTr/<case>_0001 (noNorm channel)
  *_seg-vert*_msk.nii.gz      vertebra instance mask         -> labelsTr/<case>
  *_poi.json                  TPTBox POI file                -> poisTr/<case>.json

Files belong to one subject when their names agree after dropping the
extension, the last "_suffix" and any seg-/mod-/desc- entity; that is the case
id (sub-ct_seg-vert_label-22_msk.nii.gz and sub-ct_label-22_ct.nii.gz are both
"sub-ct_label-22"). The subregion channel is used when every subject has one.

POI files may be TPTBox's local ("format": "POI", voxel indices of the grid
stored in the file) or global ("format": "POI_GLOBAL", world mm, RAS or with
"coordinate_system": "itk" LPS) form. Each point keeps its key: structure = the
vertebra label (region), poi = the TPTBox Location id (subregion). dataset.json
names labels as TPTBox does (20 = L1, declared consecutively from 1) and POIs by
Location (50 = Vertebra_Corpus); Location *_Left/*_Right pairs become
poi_mirror_pairs.

To take points (predictions included) back to TPTBox, use
dataset_conversion.tptbox_poi.write_tptbox_poi.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Set

from poi_nnunet.errors import InvalidInputError, Problem
from poi_nnunet.geometry import ImageGeometry
from poi_nnunet.raw_dataset_writer import CaseData, DatasetWriter

from ._common import add_cases
from ._images import read_image
from ._masks import read_mask
from ._output import add_output_arguments, output_folder
from ._point_checks import structures_missing_from_mask
from ._tptbox_files import Globs, SubjectFiles, find_subjects
from ._tptbox_format import describe_point, read_tptbox_poi, write_tptbox_poi
from ._tptbox_names import left_right_pairs, poi_names, structure_labels

__all__ = ["HELP", "add_arguments", "run", "convert_subject", "read_tptbox_poi", "write_tptbox_poi"]

HELP = "TPTBox POI files (local or global) with their image, vertebra mask and optional subregion mask"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="folder holding the subjects' files (searched recursively)")
    add_output_arguments(parser)
    defaults = Globs()
    parser.add_argument("--image-glob", default=defaults.image, help=f"image file names (default: {defaults.image})")
    parser.add_argument("--vert-glob", default=defaults.vertebra_mask,
                        help=f"vertebra instance masks (default: {defaults.vertebra_mask})")
    parser.add_argument("--subreg-glob", default=defaults.subregion_mask,
                        help=f"subregion masks (default: {defaults.subregion_mask})")
    parser.add_argument("--poi-glob", default=defaults.poi, help=f"TPTBox POI files (default: {defaults.poi})")
    parser.add_argument("--no-subregion", action="store_true",
                        help="do not add the subregion masks as an input channel")
    parser.add_argument("--channel-name", default="CT",
                        help="dataset.json name of the image channel; nnU-Net normalises 'CT' with CT statistics "
                             "and anything else per image (default: CT)")


@dataclass
class _Seen:
    """What the cases showed, for dataset.json (known only after reading them all)."""

    labels: Set[int] = field(default_factory=set)
    poi_ids: Set[int] = field(default_factory=set)


def run(args: argparse.Namespace) -> Path:
    globs = Globs(args.image_glob, args.vert_glob, args.subreg_glob, args.poi_glob)
    subjects = find_subjects(Path(args.input), globs)
    with_subregion = _use_subregion(subjects, args.no_subregion)
    channels = {"0": args.channel_name, **({"1": "noNorm"} if with_subregion else {})}
    seen = _Seen()
    writer = DatasetWriter(output_folder(args), channels, {"background": 0}, overwrite=args.overwrite)
    with writer:
        add_cases(writer, [(str(s.poi), lambda s=s: convert_subject(s, with_subregion, seen)) for s in subjects])
        names = poi_names(seen.poi_ids)
        writer.labels = structure_labels(seen.labels)
        writer.pois = names
        writer.extra = {"poi_source": "TPTBox POI files", **_mirror_pairs(names)}
    return writer.target


def convert_subject(subject: SubjectFiles, with_subregion: bool, seen: _Seen) -> CaseData:
    """One subject's files as a unified case; every problem names the user's file."""
    image = read_image(subject.image, None)
    geometry = ImageGeometry.from_image(image)
    if geometry.dim != 3:
        raise InvalidInputError([Problem(str(subject.image), f"is {geometry.dim}D; TPTBox data is 3D")],
                                headline=f"cannot convert {subject.key}")
    label, labels = read_mask(subject.vertebra_mask, geometry, "vertebra mask")
    images = [image]
    if with_subregion:
        assert subject.subregion_mask is not None
        images.append(read_mask(subject.subregion_mask, geometry, "subregion mask")[0])
    pois = read_tptbox_poi(subject.poi, geometry)
    problems = structures_missing_from_mask(pois, labels, subject.poi, subject.vertebra_mask, describe_point)
    if problems:
        raise InvalidInputError(problems, headline=f"cannot convert {subject.key}")
    seen.labels |= labels
    seen.poi_ids |= {p.poi for p in pois}
    return CaseData(subject.key, images, label, pois)


def _use_subregion(subjects: List[SubjectFiles], disabled: bool) -> bool:
    """All subjects have a subregion mask, or none is used: nnU-Net needs the same channels for every case."""
    if disabled:
        return False
    lacking = [s for s in subjects if s.subregion_mask is None]
    if len(lacking) == len(subjects):
        return False
    if lacking:
        raise InvalidInputError(
            [Problem(str(s.image), f"no subregion mask for subject {s.key!r}, while other subjects have one")
             for s in lacking],
            headline="every case needs the same input channels: add the missing subregion masks or pass --no-subregion")
    return True


def _mirror_pairs(names: dict) -> dict:
    pairs = left_right_pairs(names)
    return {"poi_mirror_pairs": pairs} if pairs else {}
