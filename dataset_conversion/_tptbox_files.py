"""Which files of a TPTBox/BIDS-style folder belong to one subject.

Spine data in TPTBox's world is named BIDS-style, e.g.::

    sub-ct_label-22_ct.nii.gz                 image
    sub-ct_seg-vert_label-22_msk.nii.gz       vertebra instance mask
    sub-ct_seg-subreg_label-22_msk.nii.gz     subregion mask (optional)
    sub-ct_label-22_poi.json                  TPTBox POI file

often split over ``rawdata/`` and ``derivatives/`` trees. The folder is searched
recursively; each file is given a role by the first glob it matches (vertebra
mask, subregion mask, image; POI file), and files belong together when their
names agree after dropping the extension, the final ``_suffix`` and any
``seg-``, ``mod-`` or ``desc-`` entity (all four above give ``sub-ct_label-22``).
That key is the case id.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from poi_nnunet.errors import InvalidInputError, Problem

DROPPED_ENTITIES = ("seg-", "mod-", "desc-")
_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".json")


@dataclass(frozen=True)
class Globs:
    image: str = "*_ct.nii.gz"
    vertebra_mask: str = "*_seg-vert*_msk.nii.gz"
    subregion_mask: str = "*_seg-subreg*_msk.nii.gz"
    poi: str = "*_poi.json"


@dataclass(frozen=True)
class SubjectFiles:
    key: str
    image: Path
    vertebra_mask: Path
    poi: Path
    subregion_mask: Optional[Path] = None


def subject_key(name: str) -> str:
    """``sub-ct_seg-vert_label-22_msk.nii.gz`` -> ``sub-ct_label-22``."""
    stem = next((name[: -len(e)] for e in _EXTENSIONS if name.endswith(e)), name)
    parts = stem.split("_")
    if len(parts) > 1:
        parts = parts[:-1]  # the BIDS suffix: ct, msk, poi, ...
    return "_".join(p for p in parts if not p.startswith(DROPPED_ENTITIES))


def find_subjects(root: Path, globs: Globs = Globs()) -> List[SubjectFiles]:
    """Every subject under ``root``; any file without its partners, or two files in one role, is a problem."""
    if not root.is_dir():
        raise InvalidInputError([Problem(str(root), "input folder not found")], headline="cannot convert")
    roles: Dict[str, Dict[str, Path]] = {"image": {}, "vertebra_mask": {}, "subregion_mask": {}, "poi": {}}
    problems: List[Problem] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        role = _role(path.name, globs)
        if role is None:
            continue
        key = subject_key(path.name)
        other = roles[role].get(key)
        if other is not None:
            problems.append(Problem(str(path), f"second {role.replace('_', ' ')} for subject {key!r} (the first is "
                                               f"{other}); narrow the --{_option(role)} glob"))
            continue
        roles[role][key] = path

    subjects = []
    for key, image in sorted(roles["image"].items()):
        vertebra_mask, poi = roles["vertebra_mask"].get(key), roles["poi"].get(key)
        if vertebra_mask is None:
            problems.append(Problem(str(image), f"no vertebra mask matching {globs.vertebra_mask!r} for subject {key!r}"))
        if poi is None:
            problems.append(Problem(str(image), f"no POI file matching {globs.poi!r} for subject {key!r}"))
        if vertebra_mask is not None and poi is not None:
            subjects.append(SubjectFiles(key, image, vertebra_mask, poi, roles["subregion_mask"].get(key)))
    for role in ("vertebra_mask", "subregion_mask", "poi"):
        for key, path in sorted(roles[role].items()):
            if key not in roles["image"]:
                problems.append(Problem(str(path), f"no image matching {globs.image!r} for subject {key!r}"))
    if not subjects and not problems:
        problems.append(Problem(str(root), f"no image matching {globs.image!r} found (searched recursively)"))
    if problems:
        raise InvalidInputError(problems, headline=f"cannot pair the files under {root}")
    return subjects


def _role(name: str, globs: Globs) -> Optional[str]:
    for role in ("vertebra_mask", "subregion_mask", "image", "poi"):
        if fnmatch.fnmatchcase(name, getattr(globs, role)):
            return role
    return None


def _option(role: str) -> str:
    return {"image": "image-glob", "vertebra_mask": "vert-glob", "subregion_mask": "subreg-glob", "poi": "poi-glob"}[role]
