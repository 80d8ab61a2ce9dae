"""Synthetic 3D spine CT phantoms: the embedded demo data, and test data with a known truth.

Each case is a short run of vertebrae (3 or 4 by default, starting at a
random level between T10 and L5) built from implicit shapes: a vertebral
body, pedicles, laminae, a spinous process, transverse and articular
processes. Every subject varies in size, curvature (sagittal and lateral
bend, axial twist between levels), pose, anisotropic spacing, Hounsfield
values and noise. The grid has a non-zero origin and a rotated direction
(RAS-stored, as NIfTI converted from DICOM usually is, then tilted), so every
consumer of the data exercises real geometry.

What is written:
  imagesTr/<case>_0000   CT-like volume (int16 HU)
  imagesTr/<case>_0001   subregion mask (TPTBox Location values 41-50), channel "noNorm"
  labelsTr/<case>        vertebra instance labels with VerSe ids (T10=17 ... L5=24)
  poisTr/<case>.json     35 POIs per vertebra, ids = TPTBox Location values (body corners
                         and centres of the endplates and walls, process tips, ligament
                         attachment points), on the analytic bone surface in world mm

Every POI lies on the analytic surface of its vertebra to float precision
and within one voxel diagonal of a boundary voxel of its label; the rare
point the raster does not reach (a process thinner than a voxel on a coarse
grid) is moved onto that boundary. --displaced-pois K moves K POIs of each
training case 5-10 mm (3-6 voxels where voxels are larger) outwards, off the
surface, like the interpolation errors that POI cleaning must find; which ones is recorded in synthetic_displaced_pois.json at the dataset
root ({case: [[structure, poi], ...]}). Test cases are never displaced.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from poi_nnunet.atomic import atomic_write_text
from poi_nnunet.errors import PoiNnunetError
from poi_nnunet.geometry import ImageGeometry
from poi_nnunet.pois import Poi, PoiSet
from poi_nnunet.raw_dataset_writer import CaseData, DatasetWriter

from ._output import output_folder
from ._tptbox_names import left_right_pairs, poi_names, structure_labels
from .synthetic_common import (add_synthetic_arguments, check_shape, child_generators, float32_exact,
                               planned_cases, rotation_about)
from .synthetic_shapes import EllipticCylinder
from .synthetic_spine_render import CtAppearance, PlacedObject, ct_intensities, rasterise_spine
from .synthetic_vertebra import POI_IDS, Part, VertebraDims, vertebra_parts, vertebra_pois

HELP = "synthetic 3D spine CT phantoms: vertebra labels, subregion channel, 35 TPTBox POIs per vertebra"

DEFAULT_SHAPE = (96, 64, 64)      # numpy order (z, y, x)
DEFAULT_LEVELS = (17, 24)         # VerSe ids T10 .. L5: the run of vertebrae is drawn inside this range
LAST_VERTEBRA = 24                # L5; labels are declared for C1..L5 (nnU-Net wants them consecutive)
DISPLACED_FILE = "synthetic_displaced_pois.json"
POI_SOURCE = "synthetic spine phantom: rule-based POIs on the analytic bone surface (exact)"
# RAS-stored NIfTI as ITK reports it: index x runs to the right, y anteriorly, z superiorly.
BASE_DIRECTION = np.diag([-1.0, -1.0, 1.0])


# ---------------------------------------------------------------------------- anatomy
@dataclass(frozen=True)
class SpineSubject:
    """Everything random about one subject's anatomy, before it is fitted to a grid."""

    levels: Tuple[int, ...]                   # VerSe ids, cranial to caudal
    dims: Tuple[VertebraDims, ...]            # per level, in mm
    discs: Tuple[float, ...]                  # disc heights between consecutive levels, mm
    bends: Tuple[Tuple[float, float, float], ...]  # (sagittal, lateral, twist) degrees between levels
    pose: np.ndarray                          # rotation of the whole run
    world_centre: np.ndarray                  # where the run sits in scanner coordinates


def _randomrotation_about(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    return rotation_about(rng.normal(size=3), rng.uniform(0, max_degrees))


def draw_subject(rng: np.random.Generator, num_vertebrae: Optional[int], levels: Tuple[int, int]) -> SpineSubject:
    first, last = levels
    if not (1 <= first <= last <= LAST_VERTEBRA):
        raise PoiNnunetError(f"vertebra_range must be VerSe ids within 1..{LAST_VERTEBRA} (C1..L5), got {levels}")
    n = int(rng.integers(3, 5)) if num_vertebrae is None else int(num_vertebrae)
    if not (1 <= n <= last - first + 1):
        raise PoiNnunetError(f"num_vertebrae must be 1..{last - first + 1} for vertebra_range {levels}, got {n}")
    top = int(rng.integers(first, last - n + 2))
    ids = tuple(range(top, top + n))
    size = rng.uniform(0.88, 1.12)
    dims = []
    for vid in ids:
        lumbar = np.clip((vid - 17) / 7, 0, 1)   # 0 at T10, 1 at L5: bodies grow, spinous processes flatten
        base = VertebraDims().scaled(size * (0.8 + 0.22 * lumbar) * rng.uniform(0.97, 1.03))
        dims.append(VertebraDims(
            body_half_width=base.body_half_width * rng.uniform(0.92, 1.08),
            body_half_depth=base.body_half_depth * rng.uniform(0.92, 1.08),
            body_half_height=base.body_half_height * rng.uniform(0.9, 1.1),
            canal_depth=base.canal_depth * rng.uniform(0.9, 1.1),
            pedicle_radius=base.pedicle_radius * rng.uniform(0.9, 1.1),
            lamina_radius=base.lamina_radius * rng.uniform(0.9, 1.1),
            process_radius=base.process_radius * rng.uniform(0.9, 1.1),
            spinous_length=base.spinous_length * rng.uniform(0.85, 1.15),
            spinous_half_height=base.spinous_half_height * rng.uniform(0.85, 1.15),
            spinous_half_thickness=base.spinous_half_thickness * rng.uniform(0.9, 1.1),
            spinous_angle=40 - 25 * lumbar + rng.uniform(-5, 5),
            transverse_length=base.transverse_length * rng.uniform(0.8, 1.15),
            transverse_angle=base.transverse_angle + rng.uniform(-6, 6),
            articular_height=base.articular_height * rng.uniform(0.9, 1.1),
        ))
    sagittal, lateral = rng.uniform(-2, 6), rng.uniform(-3, 3)   # per-subject curvature, degrees per level
    bends = tuple((sagittal + rng.normal(0, 1.5), lateral + rng.normal(0, 1.0), rng.normal(0, 2.0))
                  for _ in range(n - 1))
    discs = tuple(9.0 * size * rng.uniform(0.8, 1.2) for _ in range(n - 1))
    pose = rotation_about([0, 0, 1], rng.uniform(-10, 10)) @ _randomrotation_about(rng, 12)
    world_centre = np.array([rng.uniform(-40, 40), rng.uniform(-40, 40), rng.uniform(-400, 100)])
    return SpineSubject(ids, tuple(dims), discs, bends, pose, world_centre)


def build_spine(subject: SpineSubject, scale: float = 1.0) -> Tuple[List[PlacedObject], List[PlacedObject]]:
    """Stack the vertebrae caudal to cranial along a bending centreline; return vertebrae and discs in world mm.

    Each level's frame is the previous one turned by its bend, and the next
    body sits one disc above along the mean of the two superior axes, so
    curvature and twist accumulate as in a real spine.
    """
    dims = [d.scaled(scale) for d in subject.dims]
    order = list(range(len(dims)))[::-1]          # indices into subject.levels, caudal first
    frames: List[np.ndarray] = [np.eye(3)]        # in caudal-first order, like centres
    centres: List[np.ndarray] = [np.zeros(3)]
    disc_frames = []
    for lower, upper in zip(order[:-1], order[1:]):
        sag, lat, twist = subject.bends[upper]    # bends[i] and discs[i] lie between levels i and i + 1
        r_low = frames[-1]
        r_up = r_low @ rotation_about([1, 0, 0], sag) @ rotation_about([0, 1, 0], lat) @ rotation_about([0, 0, 1], twist)
        axis = r_low[:, 2] + r_up[:, 2]
        axis /= np.linalg.norm(axis)
        gap = subject.discs[upper] * scale
        h_low, h_up = dims[lower].body_half_height, dims[upper].body_half_height
        disc_centre = centres[-1] + (h_low + 0.5 * gap) * axis
        centres.append(centres[-1] + (h_low + gap + h_up) * axis)
        frames.append(r_up)
        y = r_low[:, 1] - (r_low[:, 1] @ axis) * axis
        y /= np.linalg.norm(y)
        disc_frames.append((np.stack([np.cross(y, axis), y, axis], axis=1), disc_centre, lower, upper, gap))
    mid = 0.5 * (np.min(centres, axis=0) + np.max(centres, axis=0))
    pose, where = subject.pose, subject.world_centre
    vertebrae = []
    for k, idx in enumerate(order):
        d = dims[idx]
        vertebrae.append(PlacedObject(subject.levels[idx], vertebra_parts(d), pose @ frames[k],
                                      where + pose @ (centres[k] - mid), d))
    discs = []
    for frame, centre, lower, upper, gap in disc_frames:
        radii = (0.48 * (dims[lower].body_half_width + dims[upper].body_half_width),
                 0.48 * (dims[lower].body_half_depth + dims[upper].body_half_depth))
        shape = EllipticCylinder((0.0, 0.0, 0.0), radii, 0.5 * gap + 1.0)
        discs.append(PlacedObject(0, [Part("disc", 0, shape)], pose @ frame, where + pose @ (centre - mid)))
    return vertebrae[::-1], discs


# ---------------------------------------------------------------------------- grid
def fit_grid(subject: SpineSubject, rng: np.random.Generator, shape: Tuple[int, int, int],
             spacing: Optional[Sequence[float]]) -> Tuple[ImageGeometry, float]:
    """A rotated grid of ``shape`` voxels holding the whole run with a margin; returns it and the anatomy scale.

    Without ``spacing`` the spacing per axis follows from the anatomy's extent
    and a random fill fraction (so it is anisotropic and varies by subject);
    with it, the anatomy is scaled to fill the field of view the same way.
    """
    direction = BASE_DIRECTION @ _randomrotation_about(rng, 8)
    fill = rng.uniform(0.76, 0.9, size=3)
    shift = rng.uniform(-1, 1, size=3)
    size = np.array(shape[::-1], dtype=np.float64)            # ITK order (x, y, z)

    def extent(scale: float) -> Tuple[np.ndarray, np.ndarray]:
        vertebrae, _ = build_spine(subject, scale)
        along = np.concatenate([v.world_corners() for v in vertebrae]) @ direction  # coordinates on grid axes
        return along.min(0), along.max(0)

    lo, hi = extent(1.0)
    scale = 1.0
    if spacing is None:
        spacing_mm = (hi - lo) / (fill * size)
    else:
        spacing_mm = np.asarray(spacing, dtype=np.float64)
        if spacing_mm.shape != (3,) or np.any(spacing_mm <= 0):
            raise PoiNnunetError(f"spacing must be 3 positive numbers (x, y, z mm), got {list(spacing)}")
        scale = float(np.min(fill * size * spacing_mm / (hi - lo)))
        lo, hi = extent(scale)
    spacing_mm = float32_exact(spacing_mm)
    margin = 0.5 * (size * spacing_mm - (hi - lo))
    centre = direction @ (0.5 * (lo + hi) + 0.6 * shift * margin)
    origin = float32_exact(centre - direction @ (spacing_mm * (size - 1) / 2))
    return ImageGeometry(origin, spacing_mm, direction, tuple(int(s) for s in size)), scale


# ---------------------------------------------------------------------------- POIs
def _boundary_points(labels: np.ndarray, label: int, block: Tuple[slice, ...], geo: ImageGeometry) -> np.ndarray:
    """World positions of the centres of the label's boundary voxels (inside, with a 6-neighbour outside)."""
    mask = labels[block] == label
    edge = mask & ~ndimage.binary_erosion(mask)
    offset = np.array([s.start for s in block])
    return geo.array_to_world(np.argwhere(edge) + offset)


def surface_tolerance(geo: ImageGeometry) -> float:
    """How far (mm) a point on the analytic surface may be from the nearest boundary voxel centre."""
    return float(np.linalg.norm(geo.spacing))


def place_pois(vertebrae: List[PlacedObject], labels: np.ndarray, blocks: dict,
               geo: ImageGeometry) -> Dict[Tuple[int, int], np.ndarray]:
    """(structure, poi) -> world position on the vertebra's surface.

    A point that the rasterised label does not reach within one voxel (a
    process thinner than a voxel, or a tip buried in a neighbour) is moved to
    the nearest boundary voxel centre, so every POI is where a mask-based
    method could find it.
    """
    out: Dict[Tuple[int, int], np.ndarray] = {}
    tol = surface_tolerance(geo)
    for v in vertebrae:
        local = vertebra_pois(v.dims, v.parts)
        ids = sorted(local)
        world = v.to_world(np.array([local[i] for i in ids]))
        boundary = _boundary_points(labels, v.label, blocks[v.label], geo)
        if len(boundary) == 0:
            raise PoiNnunetError(f"vertebra {v.label} is too small for the grid ({list(geo.spacing)} mm voxels): "
                                 "use a larger shape or smaller spacing")
        dist = np.linalg.norm(world[:, None, :] - boundary[None, :, :], axis=2)
        nearest = dist.argmin(axis=1)
        far = dist[np.arange(len(ids)), nearest] > tol
        world[far] = boundary[nearest[far]]
        for poi, pos in zip(ids, world):
            out[(v.label, poi)] = pos
    return out


def displace_pois(pois: Dict[Tuple[int, int], np.ndarray], model: SpineModel, count: int,
                  rng: np.random.Generator) -> List[Tuple[int, int]]:
    """Move ``count`` POIs off the bone along their outward normal; return their keys.

    Each moves 5-10 mm (3-6 voxels where voxels are larger) and must end at
    least 70 % of that away from every vertebra and inside the image, so "off
    the surface" is unambiguous on the raster too.
    """
    if count > len(pois):
        raise PoiNnunetError(f"displaced_pois={count} exceeds the {len(pois)} POIs of the case")
    geo, bone_sdf = model.geometry, model.bone_sdf
    keys = sorted(pois)
    chosen: List[Tuple[int, int]] = []
    size = np.array(geo.size, dtype=np.float64)
    step = max(5.0, 3.0 * float(geo.spacing.max()))
    for i in rng.permutation(len(keys)):
        if len(chosen) == count:
            break
        key = keys[i]
        p = pois[key]
        h = 0.05
        grad = np.array([(bone_sdf(p + h * e) - bone_sdf(p - h * e))[0] for e in np.eye(3)])
        normal = grad / max(np.linalg.norm(grad), 1e-9)
        for _ in range(10):
            distance = step * rng.uniform(1.0, 2.0)
            direction = normal + 0.4 * rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            q = p + distance * direction
            idx = geo.world_to_index(q)
            if np.all(idx >= 1) and np.all(idx <= size - 2) and bone_sdf(q[None])[0] >= 0.7 * distance:
                pois[key] = q
                chosen.append(key)
                break
    if len(chosen) < count:
        raise PoiNnunetError(f"could only displace {len(chosen)} of {count} POIs inside the image; "
                             "use fewer or a larger shape")
    return sorted(chosen)


# ---------------------------------------------------------------------------- a case
@dataclass
class SpineModel:
    """The analytic truth behind a case: its grid and its placed vertebrae and discs (world mm)."""

    geometry: ImageGeometry
    vertebrae: List[PlacedObject]
    discs: List[PlacedObject]
    scale: float  # factor the subject's anatomy was scaled by to fit a given spacing (1 otherwise)

    def bone_sdf(self, world: np.ndarray) -> np.ndarray:
        """Signed distance (mm, negative inside) from world points ``(N, 3)`` to the nearest vertebra."""
        return np.min([v.sdf_world(world) for v in self.vertebrae], axis=0)


def spine_model(seed: int, shape: Sequence[int] = DEFAULT_SHAPE, num_vertebrae: Optional[int] = None,
                spacing: Optional[Sequence[float]] = None,
                vertebra_range: Tuple[int, int] = DEFAULT_LEVELS) -> SpineModel:
    """The anatomy and grid of the case :func:`make_spine_case` makes from the same arguments."""
    shape = check_shape(shape, 3, 16)
    rng_anatomy, rng_grid, _, _ = child_generators(seed, 4)
    subject = draw_subject(rng_anatomy, num_vertebrae, tuple(vertebra_range))
    geo, scale = fit_grid(subject, rng_grid, shape, spacing)
    vertebrae, discs = build_spine(subject, scale)
    return SpineModel(geo, vertebrae, discs, scale)


def make_spine_case(case_id: str, seed: int, shape: Sequence[int] = DEFAULT_SHAPE, displaced_pois: int = 0,
                    num_vertebrae: Optional[int] = None, spacing: Optional[Sequence[float]] = None,
                    vertebra_range: Tuple[int, int] = DEFAULT_LEVELS) -> Tuple[CaseData, List[Tuple[int, int]]]:
    """One synthetic spine case and the (structure, poi) keys of the POIs moved off the surface.

    ``shape`` is in numpy order (z, y, x); ``spacing``, if given, in ITK order
    (x, y, z) mm, and the anatomy is scaled to fit it; otherwise the spacing
    is chosen per subject. ``num_vertebrae`` defaults to 3 or 4 at random.
    The same arguments always give the same case.
    """
    model = spine_model(seed, shape, num_vertebrae, spacing, vertebra_range)
    _, _, rng_texture, rng_poi = child_generators(seed, 4)
    geo = model.geometry
    shell = max(2.0 * model.scale, 0.75 * float(geo.spacing.min()))
    raster = rasterise_spine(model.vertebrae, model.discs, geo, corpus_shell=shell)
    ct = ct_intensities(raster, geo.spacing, CtAppearance.draw(rng_texture), rng_texture)
    pois = place_pois(model.vertebrae, raster.labels, raster.blocks, geo)
    displaced = displace_pois(pois, model, displaced_pois, rng_poi) if displaced_pois else []
    images = [geo.apply_to(sitk.GetImageFromArray(ct)), geo.apply_to(sitk.GetImageFromArray(raster.subregions))]
    label = geo.apply_to(sitk.GetImageFromArray(raster.labels))
    points = PoiSet([Poi(s, p, tuple(float(c) for c in pos)) for (s, p), pos in sorted(pois.items())])
    return CaseData(case_id, images, label, points), displaced


# ---------------------------------------------------------------------------- a dataset
def spine_dataset_json_fields() -> Tuple[Dict[str, str], Dict[str, int], Dict[int, str], Dict[str, Any]]:
    """channel_names, labels, pois and the extra dataset.json keys of every synthetic spine dataset."""
    names = poi_names(POI_IDS)
    extra = {"poi_mirror_pairs": left_right_pairs(names), "structure_mirror_pairs": [], "poi_source": POI_SOURCE}
    return {"0": "CT", "1": "noNorm"}, structure_labels([LAST_VERTEBRA]), names, extra


def write_spine_dataset(target: Path, num_cases: int = 20, seed: int = 0, num_test: int = 0, displaced_pois: int = 0,
                        overwrite: bool = False, **case_options: Any) -> Path:
    """Write a validated dataset folder ``target`` of synthetic spine cases (see the module docstring)."""
    target = Path(target)
    channels, labels, names, extra = spine_dataset_json_fields()
    plan = list(planned_cases("spine", num_cases, num_test, seed))
    with DatasetWriter(target, channels, labels, pois=names, extra=extra, overwrite=overwrite) as writer:
        truth: Dict[str, List[List[int]]] = {}
        for case_id, case_seed, split in plan:
            case, moved = make_spine_case(case_id, case_seed, displaced_pois=displaced_pois if split == "Tr" else 0,
                                          **case_options)
            case.split = split
            writer.add_case(case)
            if moved:
                truth[case_id] = [list(k) for k in moved]
        if truth:
            lines = ",\n".join(f"  {json.dumps(case)}: {json.dumps(keys)}" for case, keys in truth.items())
            atomic_write_text(writer.staging / DISPLACED_FILE, "{\n" + lines + "\n}\n")
    return target


# ---------------------------------------------------------------------------- poi_convert synthetic-spine
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_synthetic_arguments(parser, default_cases=20, default_shape=DEFAULT_SHAPE, shape_axes="Z Y X")
    parser.add_argument("--displaced-pois", type=int, default=0, metavar="K",
                        help="move K POIs of each training case off the bone surface (default 0)")
    parser.add_argument("--vertebrae", type=int, default=None,
                        help="vertebrae per case (default: 3 or 4 at random)")


def run(args: argparse.Namespace) -> Path:
    return write_spine_dataset(output_folder(args), num_cases=args.cases, seed=args.seed, num_test=args.test_cases,
                               displaced_pois=args.displaced_pois, overwrite=args.overwrite, shape=tuple(args.shape),
                               num_vertebrae=args.vertebrae)
