"""Synthetic 2D wrist X-ray phantoms: 17 overlapping bones with 720 contour landmarks in correspondence.

Made for dense-correspondence work (the GRAZPEDWRI-DX setting of DenseSeg):
many landmarks, each the same anatomical point in every case, on bones of
very different sizes that overlap in projection. A PA view of a child's hand
(fingers at the top, thumb on the image's left): the distal radius and ulna
(their proximal ends rounded off inside the image), their separate distal
epiphyses, the 8 carpals in two rows, and the 5 metacarpals fanning out.

What is written:
  imagesTr/<case>_0000   X-ray-like image (uint16, 12-bit range), channel "X-ray"; 256 x 256 pixels
                         at 0.4 mm by default (--shape changes the pixels, not the 102.4 mm field)
  labelsTr/<case>        1 radius, 2 ulna, 3 radius_epiphysis, 4 ulna_epiphysis, 5 scaphoid, 6 lunate,
                         7 triquetrum, 8 pisiform, 9 trapezium, 10 trapezoid, 11 capitate, 12 hamate,
                         13-17 metacarpal_1..5
  poisTr/<case>.json     720 contour landmarks, 23-66 per bone (in proportion to its outline's length),
                         POI ids 1..720 consecutive in label order; structure = the bone's label

Shapes (:mod:`dataset_conversion.synthetic_wrist_bones`): each bone is a
closed smooth outline with a fixed parameter per landmark, so POI k is the
same point of the same bone in every case. Per case: per-bone rotation +-4
degrees, scale 0.94-1.06 per axis, 0.4 mm shift and radial shape modes 2-4 of
a few percent; then one similarity for the whole hand (rotation +-10 degrees,
scale 0.9-1.1, a shift keeping every outline at least 3 mm inside the image).

Overlaps: the image adds the bones where they overlap (each bone a bright
shell with a brighter cortex rim, over soft tissue); the label map holds one
label per pixel, and the higher label is drawn on top (metacarpal bases over
the distal carpals, the pisiform over the triquetrum). A landmark always lies
on its own bone's true outline and keeps that bone as its structure, also
where a higher label covers that part of the outline: then it sits inside
the other bone's label (about 8 % of the points over 30 cases: up to half of
the triquetrum's under the pisiform, a third of the capitate's, trapezium's
and lunate's under their neighbours and the metacarpal bases). Every bone
keeps a visible area: at least 43 % of its own (the triquetrum), most bones
over 90 %. No mirror pairs (one hand). Same seed, same case, bit for bit.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from poi_nnunet.errors import PoiNnunetError
from poi_nnunet.geometry import ImageGeometry
from poi_nnunet.pois import Poi, PoiSet
from poi_nnunet.raw_dataset_writer import CaseData

from ._output import output_folder
from .synthetic_common import (add_synthetic_arguments, check_shape, child_generators, float32_exact,
                               write_synthetic_dataset)
from .synthetic_contours import polygon_occupancy
from .synthetic_wrist_bones import (BONES, LANDMARK_PARAMETERS, bone_outline, dense_parameters, draw_variation,
                                    poi_ids)

HELP = "synthetic 2D wrist X-rays: 17 overlapping bones with 720 corresponding contour landmarks"

DEFAULT_SHAPE = (256, 256)  # numpy order (rows, columns)
FIELD_MM = 102.4            # side of the square field of view (0.4 mm pixels at the default shape)
BORDER_MM = 3.0             # every outline stays this far inside the image
POI_SOURCE = ("synthetic wrist phantom: landmark k of a bone is the point at a fixed parameter of the bone's "
              "outline (equally spaced by arc length on its template), exact, world mm")


def wrist_dataset_json_fields() -> Tuple[Dict[str, str], Dict[str, int], Dict[int, str], Dict[str, Any]]:
    """channel_names, labels, pois and the extra dataset.json keys of every synthetic wrist dataset."""
    names = {i: f"{name}_{k:03d}" for name, group in poi_ids().items() for k, i in enumerate(group)}
    labels = {"background": 0, **{b.name: b.label for b in BONES}}
    return {"0": "X-ray"}, labels, names, {"poi_source": POI_SOURCE}


def wrist_geometry(shape: Sequence[int] = DEFAULT_SHAPE) -> ImageGeometry:
    """The grid of every case: ``shape`` (rows, columns) over the FIELD_MM field, identity direction, centred on 0."""
    shape = check_shape(shape, 2, 32)
    size = np.array(shape[::-1], dtype=np.float64)  # ITK order (x, y)
    pixel = float(float32_exact([FIELD_MM / min(shape)])[0])
    origin = float32_exact(-pixel * (size - 1) / 2)
    return ImageGeometry(origin, [pixel, pixel], np.eye(2), tuple(int(s) for s in size))


# ---------------------------------------------------------------------------- anatomy
@dataclass
class WristModel:
    """The truth behind a case: its grid, each bone's dense outline and landmarks (world mm), the hand's pose.

    ``outlines[name]``: ``(M, 2)`` closed polyline that is rasterised;
    ``landmarks[name]``: ``(N, 2)`` in POI order, each a vertex of that
    polyline; ``pose``: ``(3, 3)`` homogeneous anatomy-frame -> world map.
    """

    geometry: ImageGeometry
    outlines: Dict[str, np.ndarray]
    landmarks: Dict[str, np.ndarray]
    pose: np.ndarray


def _hand_pose(points: np.ndarray, geo: ImageGeometry, rng: np.random.Generator) -> np.ndarray:
    """Homogeneous ``(3, 3)`` similarity: rotation +-10 deg, scale 0.9-1.1, a shift that keeps ``points`` inside."""
    angle = np.radians(rng.uniform(-10.0, 10.0))
    linear = rng.uniform(0.9, 1.1) * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = points @ linear.T
    lo = geo.index_to_world([-0.5, -0.5]) + BORDER_MM - moved.min(axis=0)
    hi = geo.index_to_world(np.asarray(geo.size, dtype=np.float64) - 0.5) - BORDER_MM - moved.max(axis=0)
    if np.any(lo > hi):
        raise PoiNnunetError(f"the hand does not fit {BORDER_MM} mm inside a {FIELD_MM} mm field")  # bone table bug
    pose = np.eye(3)
    pose[:2, :2], pose[:2, 2] = linear, rng.uniform(lo, hi)
    return pose


def wrist_model(seed: int, shape: Sequence[int] = DEFAULT_SHAPE) -> WristModel:
    """The outlines, landmarks and grid of the case :func:`make_wrist_case` makes from the same arguments."""
    geo = wrist_geometry(shape)
    rng_bones, rng_pose, _ = child_generators(seed, 3)
    variations = {b.name: draw_variation(rng_bones) for b in BONES}
    local = {b.name: bone_outline(b, variations[b.name], dense_parameters(b)) for b in BONES}
    pose = _hand_pose(np.concatenate(list(local.values())), geo, rng_pose)
    outlines = {name: points @ pose[:2, :2].T + pose[:2, 2] for name, points in local.items()}
    landmarks = {b.name: bone_outline(b, variations[b.name], LANDMARK_PARAMETERS[b.name]) @ pose[:2, :2].T
                 + pose[:2, 2] for b in BONES}
    return WristModel(geo, outlines, landmarks, pose)


# ---------------------------------------------------------------------------- image
def bone_occupancy(outline: np.ndarray, geo: ImageGeometry) -> np.ndarray:
    """Fraction of each pixel ``(rows, cols)`` the bone covers, rasterised only over its bounding box (fast)."""
    shape = geo.size[::-1]
    index = geo.world_to_index(outline)                          # (x, y)
    lo = np.maximum(np.floor(index.min(axis=0)).astype(int) - 2, 0)
    hi = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 3, np.asarray(geo.size))
    out = np.zeros(shape, dtype=np.float32)
    out[lo[1]:hi[1], lo[0]:hi[0]] = polygon_occupancy(index - lo, (hi[1] - lo[1], hi[0] - lo[0]))
    return out


def _smooth_step(distance: np.ndarray, width: float) -> np.ndarray:
    """1 well inside (negative distance), 0 well outside, a tanh ramp ``width`` mm wide between."""
    return 0.5 * (1.0 - np.tanh(2.0 * distance / width))


def _soft_tissue(geo: ImageGeometry, pose: np.ndarray, bones: np.ndarray) -> np.ndarray:
    """Forearm and hand silhouette ``(rows, cols)`` in [0, 1], drawn in the anatomy frame and moved with the hand."""
    rows, cols = np.indices(geo.size[::-1], dtype=np.float64)
    world = geo.array_to_world(np.stack([rows.ravel(), cols.ravel()], axis=1))
    x, y = ((world - pose[:2, 2]) @ np.linalg.inv(pose[:2, :2]).T).T
    middle = np.interp(y, [-10.0, 8.0], [-4.5, -1.5])          # the hand's midline, leaning to the thumb
    half_width = np.interp(y, [-10.0, 8.0], [33.0, 21.0])      # palm wider than the forearm
    band = _smooth_step(np.abs(x - middle) - half_width, 4.0)
    around = np.clip(3.0 * ndimage.gaussian_filter(bones, 3.0 / geo.spacing[0]), 0.0, 1.0)  # the thumb
    return np.maximum(band.reshape(rows.shape), around)


def _bounding_box(mask: np.ndarray, margin: int = 2) -> Tuple[slice, slice]:
    """Slices ``(rows, cols)`` around the nonzero pixels of ``mask``, ``margin`` wider (so a distance map sees the
    background around the bone)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return (slice(max(rows[0] - margin, 0), rows[-1] + margin + 1),
            slice(max(cols[0] - margin, 0), cols[-1] + margin + 1))


def _exposure(shape: Tuple[int, int], pixel: float, rng: np.random.Generator, waves: int = 6) -> np.ndarray:
    """Uneven exposure ``shape``, standard deviation about 1: a few random plane waves 40-120 mm long.

    Cheaper than smoothing noise over centimetres, and as smooth.
    """
    rows, cols = np.indices(shape, dtype=np.float64) * pixel
    out = np.zeros(shape)
    for _ in range(waves):
        angle, length, phase = rng.uniform(0, np.pi), rng.uniform(40.0, 120.0), rng.uniform(0, 2 * np.pi)
        out += np.cos(2 * np.pi * (cols * np.cos(angle) + rows * np.sin(angle)) / length + phase)
    return out * np.sqrt(2.0 / waves)


def render_wrist(occupancy: Dict[str, np.ndarray], geo: ImageGeometry, pose: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """uint16 radiograph-like image ``(rows, cols)``: soft tissue plus every bone's projection, blur and noise.

    A bone projects as a shell: a medullary level plus a cortex rim that
    fades within about a millimetre of its outline; overlapping bones add up.
    """
    pixel = float(geo.spacing[0])
    union = np.clip(sum(occupancy.values()), 0.0, 1.0)
    image = 0.08 + rng.uniform(0.22, 0.3) * _soft_tissue(geo, pose, union)
    cortex = rng.uniform(0.6, 1.0)
    for occ in occupancy.values():
        box = _bounding_box(occ)
        depth = (ndimage.distance_transform_edt(occ[box] >= 0.5) - 0.5) * pixel   # mm inside the outline
        medulla = rng.uniform(0.35, 0.5)
        shell = medulla + (1.0 - medulla) * np.exp(-(depth / cortex) ** 2)
        image[box] += rng.uniform(0.28, 0.38) * occ[box] * shell
    image = ndimage.gaussian_filter(image, sigma=rng.uniform(0.5, 0.9))
    image = image + rng.uniform(0.03, 0.08) * _exposure(image.shape, pixel, rng)
    image = image + rng.normal(0.0, rng.uniform(0.01, 0.025), size=image.shape)
    image = np.clip(image / 1.2, 0.0, 1.0) ** rng.uniform(0.85, 1.2)
    return np.rint(image * 4095).astype(np.uint16)


# ---------------------------------------------------------------------------- a case
def make_wrist_case(case_id: str, seed: int, shape: Sequence[int] = DEFAULT_SHAPE) -> CaseData:
    """One synthetic wrist X-ray: image, label map (higher label on top) and 720 contour landmarks.

    ``shape`` is in numpy order (rows, columns); the field of view stays
    FIELD_MM, so the pixel size follows. Same arguments, same case.
    """
    model = wrist_model(seed, shape)
    geo = model.geometry
    rng_texture = child_generators(seed, 3)[2]
    labels = np.zeros(geo.size[::-1], dtype=np.uint8)
    occupancy: Dict[str, np.ndarray] = {}
    ids = poi_ids()
    points: List[Poi] = []
    for bone in BONES:  # label order: a later (higher) label covers an earlier one
        occupancy[bone.name] = bone_occupancy(model.outlines[bone.name], geo)
        labels[occupancy[bone.name] >= 0.5] = bone.label
        for poi, pos in zip(ids[bone.name], model.landmarks[bone.name]):
            points.append(Poi(bone.label, poi, (float(pos[0]), float(pos[1]))))
    image = geo.apply_to(sitk.GetImageFromArray(render_wrist(occupancy, geo, model.pose, rng_texture)))
    label = geo.apply_to(sitk.GetImageFromArray(labels))
    return CaseData(case_id, [image], label, PoiSet(points))


# ---------------------------------------------------------------------------- a dataset
def write_wrist_dataset(target: Path, num_cases: int = 40, seed: int = 0, num_test: int = 0, overwrite: bool = False,
                        **case_options: Any) -> Path:
    """Write a validated dataset folder ``target`` of synthetic wrist X-rays (see the module docstring)."""
    return write_synthetic_dataset(target, "wrist", wrist_dataset_json_fields(), make_wrist_case, num_cases, num_test, seed, overwrite,
                                   **case_options)


# ---------------------------------------------------------------------------- poi_convert synthetic-wrist
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_synthetic_arguments(parser, default_cases=40, default_shape=DEFAULT_SHAPE, shape_axes="Y X")


def run(args: argparse.Namespace) -> Path:
    return write_wrist_dataset(output_folder(args), num_cases=args.cases, seed=args.seed, num_test=args.test_cases,
                               overwrite=args.overwrite, shape=tuple(args.shape))
