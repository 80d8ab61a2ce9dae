"""Synthetic 2D polygons phantom: a triangle, a quadrilateral and a pentagon with their 12 vertices as landmarks.

Each case is a 112 x 128 image (rows x columns) at 0.8 mm isotropic spacing
showing three filled convex polygons over a smoothly varying, noisy
background. It is made for learning-speed benchmarks: a landmark model has to
tell which polygon is which from its shape alone (all three are filled with
intensities drawn from one range and placed anywhere), and which corner of it
a point is, although corners of one polygon look alike locally.

What is written:
  imagesTr/<case>_0000   float32 image, channel "image" (nnU-Net's default z-score normalisation)
  labelsTr/<case>        1 triangle, 2 quad, 3 pentagon (a pixel belongs to a polygon it covers by >= 50 %)
  poisTr/<case>.json     12 vertex landmarks: POIs 1-3 the triangle's, 4-7 the quad's, 8-12 the pentagon's

With ``masks=False`` (``--landmarks_only``) no labels are written, dataset.json
declares ``"labels": {"background": 0}`` and every POI has structure 0 (a
landmark-only dataset); images and positions are the same as with masks.

Shapes: each polygon starts as a regular polygon with vertex 0 at the top of
the image (smallest row) and the following vertices numbered *clockwise as
the image is displayed* (row 0 at the top, column 0 at the left: top, then to
the right, down, ...). It gets a circumradius of 11-16 mm, an anisotropic
scale of 0.85-1.15 per axis (for the quad along its sides, so it stays a
rectangle: its four corners look alike), a rotation within +-25 degrees, and
each vertex a jitter of up to 8 % of the radius. The rotation is small enough
that POI k is always the same corner (vertex 0 was the topmost one in every
one of 9000 drawn polygons; that is measured, not guaranteed).

Placement: the polygons go, in random order, to random positions keeping
>= 3 mm between polygons and >= 4 mm to the image's border (rejection sampling
with a bounded number of tries, drawn from the case's seed). The landmarks are
the polygon vertices exactly, in world mm (LPS through the image geometry's
index -> world mapping); the image is rendered from the same vertices with
anti-aliased edges, so the truth is sub-pixel. Same seed, same case, bit for bit.
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

HELP = "synthetic 2D polygons: a triangle, a quad and a pentagon with their 12 vertices as landmarks"

DEFAULT_SHAPE = (112, 128)  # numpy order (rows, columns)
SPACING = 0.8               # mm, isotropic
POI_SOURCE = ("synthetic polygons phantom: each landmark is its polygon's vertex exactly (sub-pixel, world mm); "
              "vertex 0 at the top, numbered clockwise as displayed")

RADIUS_MM = (11.0, 16.0)
SCALE = (0.85, 1.15)
MAX_ROTATION_DEG = 25.0
JITTER = 0.08               # of the circumradius
GAP_MM = 3.0                # between polygons
BORDER_MM = 4.0             # to the image's border
POSITION_TRIES = 200        # per polygon and layout attempt
LAYOUT_TRIES = 50


@dataclass(frozen=True)
class PolygonKind:
    name: str
    label: int
    vertices: int
    first_poi: int

    @property
    def poi_ids(self) -> List[int]:
        return list(range(self.first_poi, self.first_poi + self.vertices))


POLYGONS: Tuple[PolygonKind, ...] = (
    PolygonKind("triangle", 1, 3, 1),
    PolygonKind("quad", 2, 4, 4),
    PolygonKind("pentagon", 3, 5, 8),
)


def polygons_dataset_json_fields(masks: bool = True) -> Tuple[Dict[str, str], Dict[str, int], Dict[int, str], Dict[str, Any]]:
    """channel_names, labels, pois and the extra dataset.json keys of a polygons dataset (no mirror pairs)."""
    labels = {"background": 0}
    if masks:
        labels.update({k.name: k.label for k in POLYGONS})
    names = {i: f"{k.name}_{n}" for k in POLYGONS for n, i in enumerate(k.poi_ids)}
    return {"0": "image"}, labels, names, {"poi_source": POI_SOURCE}


def polygons_geometry(shape: Sequence[int] = DEFAULT_SHAPE) -> ImageGeometry:
    """The grid of every case: ``shape`` (rows, columns) at 0.8 mm, identity direction, centred on world 0."""
    shape = check_shape(shape, 2, 16)
    size = np.array(shape[::-1], dtype=np.float64)  # ITK order (x, y)
    pixel = float(float32_exact([SPACING])[0])
    origin = float32_exact(-pixel * (size - 1) / 2)
    return ImageGeometry(origin, [pixel, pixel], np.eye(2), tuple(int(s) for s in size))


# ---------------------------------------------------------------------------- shapes
def _rotation(angle: float) -> np.ndarray:
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def canonical_polygon(n: int) -> np.ndarray:
    """Unit regular n-gon ``(n, 2)`` in (x right, y down): vertex 0 at the top, then clockwise as displayed."""
    angles = -np.pi / 2 + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def is_convex(vertices: np.ndarray) -> bool:
    """Strictly convex with a consistent turning direction."""
    d = np.roll(vertices, -1, axis=0) - vertices
    cross = d[:, 0] * np.roll(d, -1, axis=0)[:, 1] - d[:, 1] * np.roll(d, -1, axis=0)[:, 0]
    return bool(np.all(cross > 0) or np.all(cross < 0))


def draw_shape(kind: PolygonKind, rng: np.random.Generator) -> np.ndarray:
    """Vertices (mm, centred near 0) of one polygon: radius, anisotropic scale, rotation, vertex jitter."""
    radius = rng.uniform(*RADIUS_MM)
    scale = np.diag(rng.uniform(*SCALE, size=2))
    if kind.vertices == 4:  # scale along the sides (at 45 degrees to the axes), so the quad stays a rectangle
        side = _rotation(np.pi / 4)
        scale = side @ scale @ side.T
    rotation = _rotation(np.radians(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)))
    points = radius * canonical_polygon(kind.vertices) @ (rotation @ scale).T
    r = JITTER * radius * np.sqrt(rng.uniform(0, 1, size=kind.vertices))  # uniform in a disc
    a = rng.uniform(0, 2 * np.pi, size=kind.vertices)
    points = points + np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
    if not is_convex(points):  # cannot happen with these ranges; guard the promise anyway
        raise AssertionError(f"{kind.name}: drawn polygon is not convex")
    return points - points.mean(axis=0)


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of each point ``(N, 2)`` to each segment ``a[i]``-``b[i]``: ``(N, M)``."""
    ab = b - a
    t = np.clip(((points[:, None] - a[None]) * ab[None]).sum(-1) / (ab ** 2).sum(-1)[None], 0, 1)
    return np.linalg.norm(points[:, None] - (a[None] + t[..., None] * ab[None]), axis=2)


def convex_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Distance between two convex polygons (0 when they overlap)."""
    for poly in (p, q):  # separating axis test
        edges = np.roll(poly, -1, axis=0) - poly
        normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1)
        pp, qq = p @ normals.T, q @ normals.T
        if np.any((pp.max(0) < qq.min(0)) | (qq.max(0) < pp.min(0))):
            break
    else:
        return 0.0
    d1 = _segment_distance(p, q, np.roll(q, -1, axis=0)).min()
    d2 = _segment_distance(q, p, np.roll(p, -1, axis=0)).min()
    return float(min(d1, d2))


def place_shapes(shapes: Sequence[np.ndarray], geo: ImageGeometry, rng: np.random.Generator) -> List[np.ndarray]:
    """Move each shape to a random position: >= GAP_MM apart, >= BORDER_MM inside the image; world mm."""
    lo = geo.index_to_world([-0.5, -0.5]) + BORDER_MM
    hi = geo.index_to_world(np.asarray(geo.size, dtype=np.float64) - 0.5) - BORDER_MM
    for _ in range(LAYOUT_TRIES):
        placed: Dict[int, np.ndarray] = {}
        for i in rng.permutation(len(shapes)):
            low, high = lo - shapes[i].min(axis=0), hi - shapes[i].max(axis=0)
            if np.any(low > high):
                break
            for _ in range(POSITION_TRIES):
                candidate = shapes[i] + rng.uniform(low, high)
                if all(convex_distance(candidate, other) >= GAP_MM for other in placed.values()):
                    placed[int(i)] = candidate
                    break
            else:
                break
        if len(placed) == len(shapes):
            return [placed[i] for i in range(len(shapes))]
    raise PoiNnunetError(f"cannot place the three polygons {GAP_MM} mm apart and {BORDER_MM} mm inside an image of "
                         f"{geo.size[1]} x {geo.size[0]} pixels at {SPACING} mm; use a larger --shape")


# ---------------------------------------------------------------------------- a case
@dataclass
class PolygonsModel:
    """The truth behind a case: its grid and each polygon's vertices (world mm, in POI order)."""

    geometry: ImageGeometry
    vertices: Dict[str, np.ndarray]


def polygons_model(seed: int, shape: Sequence[int] = DEFAULT_SHAPE) -> PolygonsModel:
    """The grid and vertices of the case :func:`make_polygon_case` makes from the same arguments."""
    geo = polygons_geometry(shape)
    rng_shape, rng_place, _ = child_generators(seed, 3)
    shapes = [draw_shape(k, rng_shape) for k in POLYGONS]
    placed = place_shapes(shapes, geo, rng_place)
    return PolygonsModel(geo, {k.name: v for k, v in zip(POLYGONS, placed)})


def render_polygons(occupancy: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """float32 image: smooth background, polygons of random intensity from one range, mild blur, noise."""
    shape = occupancy[0].shape
    rows, cols = np.indices(shape, dtype=np.float64)
    rows, cols = rows / shape[0] - 0.5, cols / shape[1] - 0.5
    background = rng.uniform(0.2, 0.35) + rng.uniform(-0.08, 0.08) * rows + rng.uniform(-0.08, 0.08) * cols
    shading = ndimage.gaussian_filter(rng.normal(size=shape), sigma=12.0, mode="wrap")
    background = background + rng.uniform(0.03, 0.08) * shading / max(float(shading.std()), 1e-12)
    image = background.copy()
    for occ in occupancy:  # the same range for every polygon: identity comes from shape only
        image = image + occ * (rng.uniform(0.55, 0.95) - background)
    image = ndimage.gaussian_filter(image, sigma=rng.uniform(0.3, 0.7))
    image = image + rng.normal(0, rng.uniform(0.02, 0.05), size=shape)
    return image.astype(np.float32)


def make_polygon_case(case_id: str, seed: int, shape=DEFAULT_SHAPE, masks: bool = True) -> CaseData:
    """One polygons case: image, label map (unless ``masks=False``) and the 12 vertex landmarks.

    ``shape`` is in numpy order (rows, columns). With ``masks=False`` the case
    has no label and every POI has structure 0; everything else is unchanged.
    """
    model = polygons_model(seed, shape)
    geo = model.geometry
    rng_texture = child_generators(seed, 3)[2]
    array_shape = geo.size[::-1]
    labels = np.zeros(array_shape, dtype=np.uint8)
    occupancy = []
    points: List[Poi] = []
    for kind in POLYGONS:
        vertices = model.vertices[kind.name]
        occ = polygon_occupancy(geo.world_to_index(vertices), array_shape, supersample=8)
        labels[occ >= 0.5] = kind.label
        occupancy.append(occ)
        structure = kind.label if masks else 0
        for poi, pos in zip(kind.poi_ids, vertices):
            points.append(Poi(structure, poi, (float(pos[0]), float(pos[1]))))
    image = geo.apply_to(sitk.GetImageFromArray(render_polygons(occupancy, rng_texture)))
    label = geo.apply_to(sitk.GetImageFromArray(labels)) if masks else None
    return CaseData(case_id, [image], label, PoiSet(points))


# ---------------------------------------------------------------------------- a dataset
def write_polygon_dataset(target: Path, num_cases: int = 32, seed: int = 0, num_test: int = 0, masks: bool = True,
                          overwrite: bool = False, **case_options: Any) -> Path:
    """Write a validated dataset folder ``target`` of polygons cases (see the module docstring)."""
    return write_synthetic_dataset(target, "polygons", polygons_dataset_json_fields(masks), make_polygon_case, num_cases, num_test, seed, overwrite,
                                   masks=masks, **case_options)


# ---------------------------------------------------------------------------- poi_convert synthetic-polygons
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_synthetic_arguments(parser, default_cases=32, default_shape=DEFAULT_SHAPE, shape_axes="Y X")
    parser.add_argument("--landmarks_only", "--landmarks-only", dest="landmarks_only", action="store_true",
                        help="write no labelsTr: a landmark-only dataset, every POI with structure 0")


def run(args: argparse.Namespace) -> Path:
    return write_polygon_dataset(output_folder(args), num_cases=args.cases, seed=args.seed, num_test=args.test_cases,
                                 masks=not args.landmarks_only, overwrite=args.overwrite, shape=tuple(args.shape))
