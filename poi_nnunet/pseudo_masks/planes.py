"""One set of nnU-Net plans per slicing plane, for the per-plane 2D models of ``poi_pseudo_masks`` (seed 002).

nnU-Net's ``2d`` configuration cuts slices along the first axis of the *transposed* array
(``plans['transpose_forward']``); its default planner puts the axis with the coarsest spacing first. Seed 002
trains one model per anatomical plane instead, so each plane gets its own plans identifier with a fixed
transpose (:class:`FixedTransposePlanner`):

* ``poiPlans_axial``: slices along the array axis that runs S-I (``z`` for an identity direction);
* ``poiPlans_coronal``: along the axis that runs A-P (``y`` for an identity direction);
* ``poiPlans_sagittal``: along the axis that runs L-R (``x`` for an identity direction);

for a 3D image of SimpleITK array order ``(z, y, x)``. Which array axis runs along which anatomical axis is read from the direction matrix of the first training
image (ITK's LPS world: world x is L-R, y is A-P, z is S-I; the matrix's columns are the world directions of
the ITK index axes, and ITK index axis ``j`` is numpy array axis ``dim - 1 - j``). The three axes are the
permutation that best aligns with the world axes (largest summed ``|cos|``), so an oblique or flipped image
still gets three different slicing axes. One transpose holds for the whole dataset; cases whose direction
maps differently are reported (their slices are still one of three orthogonal cuts, only the plane's name is
then wrong for them).

A 2D image (an X-ray) has one plane: nnU-Net reads it as ``(1, y, x)``, and the only plans are
``poiPlans_image`` with the identity transpose (slices along that unit axis, i.e. the image itself).

Only the ``2d`` configuration of each plane's plans is preprocessed, through
:func:`poi_nnunet.preprocessing.pipeline.plan_and_preprocess` (data in ``poiPlans_<plane>_2d``); nnU-Net's
fingerprint and the POI fingerprint are the dataset's own, shared with its default ``poiPlans``.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Dict, List, Sequence, Tuple

import numpy as np
from planners.experiment_planner import PoiExperimentPlanner

from ..errors import PoiNnunetError
from ..geometry import ImageGeometry
from ..raw_dataset import RawDataset

#: nnU-Net configuration the per-plane models use.
PLANE_CONFIGURATION = "2d"
#: Anatomical planes of a 3D image and the LPS world axis each plane's slices are perpendicular to.
PLANE_WORLD_AXES: Dict[str, int] = {"axial": 2, "coronal": 1, "sagittal": 0}
#: The one "plane" of a 2D image.
IMAGE_PLANE = "image"
PLANS_PREFIX = "poiPlans"


@dataclass(frozen=True)
class Plane:
    """A slicing plane: its name and the axis of nnU-Net's 3-axis array ``(z, y, x)`` (or ``(1, y, x)``) that is
    cut into slices."""

    name: str
    array_axis: int

    @property
    def plans_name(self) -> str:
        return f"{PLANS_PREFIX}_{self.name}"

    @property
    def data_identifier(self) -> str:
        """nnU-Net's preprocessed data folder of the plane's ``2d`` configuration."""
        return f"{self.plans_name}_{PLANE_CONFIGURATION}"

    @property
    def transpose_forward(self) -> List[int]:
        """The slicing axis first, the other two in their original order."""
        return [self.array_axis] + [a for a in range(3) if a != self.array_axis]

    @property
    def transpose_backward(self) -> List[int]:
        return [int(i) for i in np.argsort(self.transpose_forward)]


def planes_for_direction(direction: Sequence[float], dim: int) -> List[Plane]:
    """The planes of an image with ITK direction ``direction`` (``dim * dim`` numbers, row-major, as
    ``sitk.Image.GetDirection`` returns them): three for 3D (axial, coronal, sagittal), one for 2D."""
    if dim == 2:
        return [Plane(IMAGE_PLANE, 0)]
    if dim != 3:
        raise PoiNnunetError(f"a {dim}D image has no slicing planes; poi_pseudo_masks takes 2D or 3D images")
    matrix = np.abs(np.asarray(direction, dtype=np.float64).reshape(3, 3))
    # permutation[w] = ITK index axis that runs along world axis w; the one with the largest total alignment
    best = max(itertools.permutations(range(3)), key=lambda perm: sum(matrix[w, perm[w]] for w in range(3)))
    return [Plane(name, 2 - best[world]) for name, world in PLANE_WORLD_AXES.items()]


def dataset_planes(ds: RawDataset) -> List[Plane]:
    """The planes of a dataset, from the header of its first training image (see the module docstring).

    Prints one line naming the cases whose direction would give other slicing axes, if any.
    """
    cases = ds.case_ids("Tr")
    if not cases:
        raise PoiNnunetError(f"{ds.path}: no training cases in imagesTr/")
    headers = [_header(ds.image_files(c)[0]) for c in cases]
    dim, direction = headers[0]
    planes = planes_for_direction(direction, dim)
    other = [c for c, (d, direc) in zip(cases, headers) if d != dim or planes_for_direction(direc, d) != planes]
    if other:
        shown = ", ".join(other[:5]) + (" ..." if len(other) > 5 else "")
        print(f"note: {len(other)} case(s) are oriented differently from {cases[0]} ({shown}); one transpose "
              f"serves the whole dataset, so their plane names are approximate (they are still cut three ways)")
    return planes


def _header(path: Path) -> Tuple[int, Tuple[float, ...]]:
    geometry = ImageGeometry.from_file(path)  # the header only; an unreadable file is an error naming it
    return geometry.dim, tuple(float(v) for v in np.asarray(geometry.direction).ravel())


class FixedTransposePlanner(PoiExperimentPlanner):
    """:class:`~planners.experiment_planner.PoiExperimentPlanner` whose ``transpose_forward`` always puts
    ``first_axis`` first, so the ``2d`` configuration slices along it (nnU-Net's own choice, the axis with the
    coarsest spacing, is overridden). Everything else (spacing, patch, network, ``poi`` blocks) is planned as
    usual, on the transposed axes."""

    first_axis: ClassVar[int] = 0

    def determine_transpose(self) -> Tuple[List[int], List[int]]:
        """``(transpose_forward, transpose_backward)``, as nnU-Net's ``ExperimentPlanner.determine_transpose``."""
        plane = Plane("fixed", int(self.first_axis))
        return plane.transpose_forward, plane.transpose_backward


def planner_class_for(plane: Plane) -> type:
    """A :class:`FixedTransposePlanner` subclass whose transpose puts ``plane.array_axis`` first."""
    return type(f"FixedTransposePlanner_{plane.name}", (FixedTransposePlanner,), {"first_axis": plane.array_axis})


def plane_is_planned(preprocessed: Path, plane: Plane, cases: Sequence[str]) -> bool:
    """Whether ``preprocessed`` (``$nnUNet_preprocessed/<dataset>``) holds the plane's plans with its transpose and
    the ``2d`` data of every case in ``cases``."""
    plans_file = preprocessed / f"{plane.plans_name}.json"
    if not plans_file.is_file():
        return False
    try:
        plans = json.loads(plans_file.read_text(encoding="utf-8"))
    except ValueError:
        return False
    if list(plans.get("transpose_forward", [])) != plane.transpose_forward:
        return False
    if PLANE_CONFIGURATION not in plans.get("configurations", {}):
        return False
    folder = preprocessed / plane.data_identifier
    return folder.is_dir() and all((folder / f"{case}.pkl").is_file() for case in cases)


def plan_plane(dataset: Path, plane: Plane, num_processes: int, num_processes_fingerprint: int,
               progress: bool = True) -> Path:
    """Plan ``plane`` for ``dataset`` and preprocess its ``2d`` configuration; return the preprocessed folder."""
    from ..preprocessing.pipeline import plan_and_preprocess

    return plan_and_preprocess(dataset, configurations=[PLANE_CONFIGURATION], num_processes=[num_processes],
                               num_processes_fingerprint=num_processes_fingerprint, progress=progress,
                               planner_class=planner_class_for(plane), plans_name=plane.plans_name)
