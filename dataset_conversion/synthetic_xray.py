"""Synthetic 2D chest X-ray phantoms: overlapping organs with masks and corresponding contour landmarks.

Each case shows the right and left lung, the heart and both clavicles (PA
view: the patient's right is on the image's left), each a smooth closed
outline drawn from an anatomical template with per-subject size, pose and
Fourier shape variation, over a soft-tissue body with ribs and spine. Bone
and soft tissue are bright, air-filled lungs dark, edges blurred as in a
radiograph.

What is written:
  imagesTr/<case>_0000   X-ray-like image (uint16, 12-bit range), channel "X-ray"
  labelsTr/<case>        1 lung_right, 2 lung_left, 3 heart, 4 clavicle_right, 5 clavicle_left
  poisTr/<case>.json     160 contour landmarks: 44 per lung, 26 on the heart, 23 per clavicle

Overlaps are resolved by priority, the later one winning: lungs < heart <
clavicles (a clavicle crossing a lung apex is labelled clavicle). Landmarks
are spaced equally by arc length along each outline from a fixed anatomical
start (lung apex, top of the heart, sternal end of the clavicle), so POI id k
means the same place in every case. A landmark's structure is the organ whose
outline it lies on, also where a higher-priority organ covers that part of the
outline. Left and right lungs and clavicles run in mirrored directions, so
their landmarks pair up in poi_mirror_pairs and structure_mirror_pairs.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

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
from .synthetic_contours import closed_spline, equally_spaced, fourier_perturbation, polygon_occupancy

HELP = "synthetic 2D chest X-ray phantoms: lungs, heart, clavicles with 160 corresponding contour landmarks"

DEFAULT_SHAPE = (128, 128)  # numpy order (y, x)
POI_SOURCE = "synthetic chest X-ray phantom: landmarks equally spaced by arc length along each outline (exact)"

# Control points in mm: x towards the image's right (the patient's left), y downwards, origin mid-chest.
# Lungs start at the apex and run laterally first, so left and right run mirrored.
_RIGHT_LUNG = np.array([(-62, -128), (-95, -112), (-120, -80), (-135, -35), (-142, 15), (-145, 65), (-140, 102),
                        (-110, 88), (-80, 74), (-58, 82), (-50, 30), (-34, -30), (-38, -95)], dtype=float)
_LEFT_LUNG = np.array([(62, -128), (95, -112), (120, -80), (135, -35), (142, 15), (145, 65), (140, 104),
                       (118, 104), (100, 98), (96, 62), (74, 20), (42, -30), (38, -95)], dtype=float)
# Heart from its top, clockwise on the image.
_HEART = np.array([(5, -15), (40, -5), (66, 14), (82, 42), (86, 74), (70, 96), (30, 104), (-15, 100), (-36, 86),
                   (-42, 55), (-38, 25), (-24, 0)], dtype=float)


def _clavicle(side: int) -> np.ndarray:
    """Outline of an S-shaped clavicle from its sternal end: upper edge out, lateral end, lower edge back."""
    t = np.linspace(0, 1, 6)
    centre = np.stack([side * (22 + 128 * t), -96 - 26 * t + 7 * np.sin(2 * np.pi * t)], axis=1)
    tangent = np.gradient(centre, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    up = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
    up *= np.sign(-up[:, 1:2])  # the normal pointing to the top of the image
    half = (7.0 - 2.0 * t)[:, None]
    upper, lower = centre + half * up, centre - half * up
    medial, lateral = centre[0] - half[0] * tangent[0], centre[-1] + half[-1] * tangent[-1]
    return np.vstack([medial, upper, lateral, lower[::-1]])


@dataclass(frozen=True)
class Structure:
    name: str
    label: int
    landmarks: int
    template: np.ndarray   # control points, mm
    wobble: float          # amplitude of the per-subject Fourier shape perturbation, mm


# Painting order = priority: a later structure covers an earlier one where they overlap.
STRUCTURES: Tuple[Structure, ...] = (
    Structure("lung_right", 1, 44, _RIGHT_LUNG, 4.0),
    Structure("lung_left", 2, 44, _LEFT_LUNG, 4.0),
    Structure("heart", 3, 26, _HEART, 4.0),
    Structure("clavicle_right", 4, 23, _clavicle(-1), 1.5),
    Structure("clavicle_left", 5, 23, _clavicle(1), 1.5),
)
MIRRORED_STRUCTURES = (("lung_right", "lung_left"), ("clavicle_right", "clavicle_left"))


def poi_ids() -> Dict[str, List[int]]:
    """Structure name -> its POI ids: 1..160 in structure order, stable across cases and datasets."""
    out, first = {}, 1
    for s in STRUCTURES:
        out[s.name] = list(range(first, first + s.landmarks))
        first += s.landmarks
    return out


def xray_dataset_json_fields() -> Tuple[Dict[str, str], Dict[str, int], Dict[int, str], Dict[str, Any]]:
    """channel_names, labels, pois and the extra dataset.json keys of every synthetic X-ray dataset."""
    ids = poi_ids()
    by_name = {s.name: s for s in STRUCTURES}
    names = {i: f"{name}_{k:02d}" for name, group in ids.items() for k, i in enumerate(group)}
    labels = {"background": 0, **{s.name: s.label for s in STRUCTURES}}
    extra = {
        "poi_mirror_pairs": [[a, b] for right, left in MIRRORED_STRUCTURES for a, b in zip(ids[right], ids[left])],
        "structure_mirror_pairs": [[by_name[r].label, by_name[left].label] for r, left in MIRRORED_STRUCTURES],
        "poi_source": POI_SOURCE,
    }
    return {"0": "X-ray"}, labels, names, extra


# ---------------------------------------------------------------------------- anatomy
def _affine(rng: np.random.Generator, scale: Tuple[float, float], degrees: float) -> np.ndarray:
    t = np.radians(rng.uniform(-degrees, degrees))
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return rot @ np.diag(rng.uniform(*scale, size=2))


def draw_outlines(rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """Structure name -> dense outline (mm) of one subject: template, own pose and Fourier wobble, shared body pose."""
    body = _affine(rng, (0.97, 1.03), 4.0) * rng.uniform(0.88, 1.1)
    outlines = {}
    for s in STRUCTURES:
        centre = s.template.mean(axis=0)
        local = _affine(rng, (0.94, 1.06), 3.0)
        points = centre + (s.template - centre) @ local.T + rng.normal(0, 4.0, size=2)
        points = points + fourier_perturbation(len(points), rng, s.wobble)
        outlines[s.name] = closed_spline(points @ body.T)
    return outlines


def fit_grid(outlines: Dict[str, np.ndarray], rng: np.random.Generator, shape: Tuple[int, int],
             spacing: Optional[float]) -> Tuple[ImageGeometry, float]:
    """An isotropic grid holding every outline with a margin; returns it and the factor the anatomy is scaled by.

    Without ``spacing`` the pixel size follows from the anatomy's extent and a
    random fill fraction; with it, the anatomy is scaled to fill the image.
    """
    fill = rng.uniform(0.8, 0.92)
    shift = rng.uniform(-1, 1, size=2)
    points = np.concatenate(list(outlines.values()))
    lo, hi = points.min(axis=0), points.max(axis=0)
    size = np.array(shape[::-1], dtype=np.float64)     # ITK order (x, y)
    needed = float(np.max((hi - lo) / (fill * size)))
    if spacing is None:
        pixel, scale = needed, 1.0
    else:
        if not spacing > 0:
            raise PoiNnunetError(f"spacing must be a positive number of mm, got {spacing}")
        pixel, scale = float(spacing), float(spacing) / needed
    pixel = float(float32_exact([pixel])[0])
    lo, hi = lo * scale, hi * scale
    margin = 0.5 * (size * pixel - (hi - lo))
    centre = 0.5 * (lo + hi) + 0.6 * shift * margin
    origin = float32_exact(centre - pixel * (size - 1) / 2)
    return ImageGeometry(origin, [pixel, pixel], np.eye(2), tuple(int(s) for s in size)), scale


# ---------------------------------------------------------------------------- image
def _soft(distance: np.ndarray, width: float) -> np.ndarray:
    """Occupancy from a signed distance (negative inside), blended over ``width`` mm."""
    return np.clip(0.5 - distance / width, 0, 1)


def render_xray(occupancy: Dict[str, np.ndarray], geo: ImageGeometry, scale: float,
                rng: np.random.Generator) -> np.ndarray:
    """uint16 radiograph-like image: body, spine, ribs, dark lungs, brighter heart and clavicles, blur and noise."""
    rows, cols = np.indices(geo.size[::-1], dtype=np.float64)
    x = geo.origin[0] + geo.spacing[0] * cols
    y = geo.origin[1] + geo.spacing[1] * rows
    pixel = float(geo.spacing[0])
    xs, ys = x / scale, y / scale     # template millimetres, where the body is drawn
    body = _soft((np.sqrt((xs / 168) ** 2 + (ys / 215) ** 2) - 1) * 168 * scale, pixel)
    spine = _soft((np.abs(xs) - rng.uniform(14, 20)) * scale, pixel)
    ribs = np.zeros_like(x)
    ax = np.abs(xs)
    reach = _soft((np.abs(ax - 85) - 65) * scale, 3 * pixel)
    for k in range(10):
        arc = -120 + 24 * k + rng.normal(0, 2) + 38 * ((ax - 20) / 120) ** 2
        ribs = np.maximum(ribs, np.exp(-((ys - arc) / 3.5) ** 2) * reach)
    gain = {"lung_right": -rng.uniform(0.3, 0.42), "lung_left": -rng.uniform(0.3, 0.42),
            "heart": rng.uniform(0.12, 0.22), "clavicle_right": rng.uniform(0.25, 0.4),
            "clavicle_left": rng.uniform(0.25, 0.4)}
    image = 0.45 * body + rng.uniform(0.1, 0.16) * spine * body + rng.uniform(0.08, 0.14) * ribs
    for name, occ in occupancy.items():
        image = image + gain[name] * occ
    image = ndimage.gaussian_filter(image, sigma=rng.uniform(0.4, 0.9))
    image = image + ndimage.gaussian_filter(rng.normal(size=image.shape), 8) * rng.uniform(0.2, 0.6)  # uneven exposure
    image = image + rng.normal(0, rng.uniform(0.01, 0.03), size=image.shape)
    image = np.clip((image + 0.25) / 1.1, 0, 1) ** rng.uniform(0.8, 1.25)
    return np.rint(image * 4095).astype(np.uint16)


# ---------------------------------------------------------------------------- a case
@dataclass
class XrayModel:
    """The truth behind a case: its grid and each structure's outline (dense polyline, world mm)."""

    geometry: ImageGeometry
    outlines: Dict[str, np.ndarray]
    scale: float  # factor the anatomy (and the body drawn around it) was scaled by to fit the grid


def xray_model(seed: int, shape: Sequence[int] = DEFAULT_SHAPE, spacing: Optional[float] = None) -> XrayModel:
    """The outlines and grid of the case :func:`make_xray_case` makes from the same arguments."""
    shape = check_shape(shape, 2, 16)
    rng_anatomy, rng_grid, _ = child_generators(seed, 3)
    outlines = draw_outlines(rng_anatomy)
    geo, scale = fit_grid(outlines, rng_grid, tuple(shape), spacing)
    return XrayModel(geo, {name: outline * scale for name, outline in outlines.items()}, scale)


def make_xray_case(case_id: str, seed: int, shape: Sequence[int] = DEFAULT_SHAPE,
                   spacing: Optional[float] = None) -> CaseData:
    """One synthetic chest X-ray: image, priority-resolved label map and 160 contour landmarks.

    ``shape`` is in numpy order (rows, columns); ``spacing`` (mm, isotropic),
    if given, fixes the pixel size and the anatomy is scaled to fit; otherwise
    the pixel size follows from the subject's size. Same arguments, same case.
    """
    model = xray_model(seed, shape, spacing)
    geo = model.geometry
    rng_texture = child_generators(seed, 3)[2]
    shape = geo.size[::-1]
    labels = np.zeros(shape, dtype=np.uint8)
    occupancy = {}
    ids = poi_ids()
    points: List[Poi] = []
    for s in STRUCTURES:
        outline = model.outlines[s.name]
        occ = polygon_occupancy(geo.world_to_index(outline), shape)
        labels[occ >= 0.5] = s.label
        occupancy[s.name] = occ
        for poi, pos in zip(ids[s.name], equally_spaced(outline, s.landmarks)):
            points.append(Poi(s.label, poi, (float(pos[0]), float(pos[1]))))
    image = geo.apply_to(sitk.GetImageFromArray(render_xray(occupancy, geo, model.scale, rng_texture)))
    label = geo.apply_to(sitk.GetImageFromArray(labels))
    return CaseData(case_id, [image], label, PoiSet(points))


# ---------------------------------------------------------------------------- a dataset
def write_xray_dataset(target: Path, num_cases: int = 100, seed: int = 0, num_test: int = 0, overwrite: bool = False,
                       **case_options: Any) -> Path:
    """Write a validated dataset folder ``target`` of synthetic chest X-rays (see the module docstring)."""
    return write_synthetic_dataset(target, "xray", xray_dataset_json_fields(), make_xray_case, num_cases, num_test, seed, overwrite,
                                   **case_options)


# ---------------------------------------------------------------------------- poi_convert synthetic-xray
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_synthetic_arguments(parser, default_cases=100, default_shape=DEFAULT_SHAPE, shape_axes="Y X")


def run(args: argparse.Namespace) -> Path:
    return write_xray_dataset(output_folder(args), num_cases=args.cases, seed=args.seed, num_test=args.test_cases,
                              overwrite=args.overwrite, shape=tuple(args.shape))
