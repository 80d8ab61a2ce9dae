"""Synthetic 3D leg CT phantoms: one left leg from hip to ankle, four bones, 16 POIs at the hip, knee and ankle.

A long, narrow CT-like scan of the left leg of a supine patient: femur (a
spherical head on an angled, anteverted neck, greater and lesser
trochanters, shaft, distal metaphysis and two ellipsoidal condyles), patella
(an ellipsoid in front of the knee), tibia (plateau, metaphyses, shaft,
tuberosity, plafond and medial malleolus) and a thin fibula beside it (head,
shaft, lateral malleolus), with an unlabelled talus below the plafond, soft
tissue (a fat layer over muscle) around them and air outside. Shapes are
implicit (:mod:`dataset_conversion.synthetic_leg_bones`), so every POI is an
exact point of its bone.

What is written:
  imagesTr/<case>_0000   CT-like volume (int16 HU), channel "CT"; 100 x 52 x 52 voxels (z, y, x) over a
                         800 x 130 x 130 mm field by default: 8 mm slices of 2.5 mm pixels (--shape changes
                         the voxels, not the field); RAS-stored direction diag(-1, -1, 1), non-zero origin
  labelsTr/<case>        1 femur, 2 patella, 3 tibia, 4 fibula
  poisTr/<case>.json     16 POIs, structure = the bone's label, none on a shaft:
                           hip    1 femoral_head_centre, 2 greater_trochanter_tip, 3 lesser_trochanter_tip (femur)
                           knee   4 medial_femoral_condyle, 5 lateral_femoral_condyle (distal points),
                                  6 intercondylar_notch (roof) (femur); 7 patella_base, 8 patella_apex,
                                  9 patella_centre (patella); 10 medial_tibial_plateau, 11 lateral_tibial_plateau
                                  (centres of the articular faces), 12 tibial_tuberosity (tibia);
                                  15 fibular_head_apex (fibula)
                           ankle  13 tibial_plafond_centre, 14 medial_malleolus_tip (tibia);
                                  16 lateral_malleolus_tip (fibula)

Side: always the LEFT leg, in LPS world millimetres, so lateral is +x (the
patient's left) and medial -x; no mirror pairs are declared.

Per subject: overall size 0.92-1.06 (femoral head centre to plafond about
605-745 mm; femur and tibia vary by another +-3 % each), width +-4 %,
neck-shaft angle 123-135 and anteversion 4-20 degrees, patella height and
tilt, soft-tissue girth; knee flexion 0-6 and valgus -3..3 degrees (the knee moves off the hip-ankle
line, which stays straight), tibial torsion +-5, the whole leg turned +-10
degrees about its long axis and tilted +-1.5, shifted anywhere that keeps
every bone 3 mm (half a voxel where that is more) inside the field; CT values
(air, fat, muscle, marrow, cortex and its thickness) and noise.

Every POI is inside or on the surface of its own bone's analytic shape and
outside every other bone; one that the label raster does not reach within
0.999 voxel along each axis (a pole thinner than a slice: about 1 POI in 100
at the default shape, by under a millimetre) is moved the shortest way to
where it does, so each lies in or within one voxel of its own label. Same
seed, same case, bit for bit.
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
                               rotation_about, write_synthetic_dataset)
from .synthetic_leg_bones import (BONE_NAMES, POIS, SHANK, THIGH, LegAnatomy, LegDims, Primitive, build_leg,
                                  draw_dims)

HELP = "synthetic 3D leg CT, hip to ankle: femur, patella, tibia, fibula; 16 POIs at the hip, knee and ankle"

DEFAULT_SHAPE = (100, 52, 52)         # numpy order (z, y, x)
FIELD_MM = (130.0, 130.0, 800.0)      # ITK order (x, y, z): 2.5 x 2.5 x 8 mm voxels at the default shape
BORDER_MM = 3.0                       # every bone stays this far (or half a voxel, if more) inside the field
SNAP_VOXELS = 0.999                   # a POI needs a voxel of its label this close along each axis, or it is moved
# RAS-stored NIfTI as ITK reports it: index x runs to the right, y anteriorly, z superiorly.
BASE_DIRECTION = np.diag([-1.0, -1.0, 1.0])
FAR = np.float32(1e3)                 # "no shape near": distance value of untouched voxels
POI_SOURCE = ("synthetic leg phantom (left leg): POIs are exact points of the analytic bone shapes (centres, "
              "poles, articular faces) at the hip, knee and ankle, world mm")


def leg_dataset_json_fields() -> Tuple[Dict[str, str], Dict[str, int], Dict[int, str], Dict[str, Any]]:
    """channel_names, labels, pois and the extra dataset.json keys of every synthetic leg dataset."""
    labels = {"background": 0, **{name: label for label, name in sorted(BONE_NAMES.items())}}
    return {"0": "CT"}, labels, {p.poi: p.name for p in POIS}, {"poi_source": POI_SOURCE}


def leg_geometry(shape: Sequence[int], centre: Sequence[float]) -> ImageGeometry:
    """The grid of a case: ``shape`` (z, y, x) voxels over the FIELD_MM field, centred on world ``centre``."""
    size = np.array(shape[::-1], dtype=np.float64)                          # ITK order (x, y, z)
    spacing = float32_exact(np.asarray(FIELD_MM) / size)
    origin = float32_exact(np.asarray(centre) - BASE_DIRECTION @ (spacing * (size - 1) / 2))
    return ImageGeometry(origin, spacing, BASE_DIRECTION, tuple(int(s) for s in size))


# ---------------------------------------------------------------------------- pose
@dataclass(frozen=True)
class LegPose:
    """Degrees: the knee's flexion and valgus, the tibia's torsion against the femur, and the whole leg's turn
    about its long axis (external rotation > 0) and tilt about x and y."""

    flexion: float
    valgus: float
    tibial_torsion: float
    rotation: float
    tilt: Tuple[float, float]


def draw_pose(rng: np.random.Generator) -> LegPose:
    return LegPose(flexion=rng.uniform(0.0, 6.0), valgus=rng.uniform(-3.0, 3.0), tibial_torsion=rng.uniform(-5.0, 5.0),
                   rotation=rng.uniform(-10.0, 10.0), tilt=(rng.uniform(-1.5, 1.5), rng.uniform(-1.5, 1.5)))


def _turn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector ``a`` to unit vector ``b`` (they are never opposite here)."""
    v, c = np.cross(a, b), float(a @ b)
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + (k @ k) / (1.0 + c)


def pose_transforms(anatomy: LegAnatomy, dims: LegDims, pose: LegPose) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Group -> ``(rotation, offset)`` taking anatomy-frame points to leg coordinates (the posed leg, origin at
    the femoral head centre).

    The knee bends off the line from hip to ankle, which stays straight (as
    when the patient lies with hip and heel on the table): flexion moves the
    knee anteriorly, valgus medially, by ``angle * Lf * Lt / (Lf + Lt)``, so
    the angle between the femoral and tibial mechanical axes is the drawn one
    to first order.
    """
    lf, lt = dims.femur_length, dims.tibia_length
    lever = lf * lt / (lf + lt)
    ox, oy = lever * np.radians(-pose.valgus), lever * np.radians(-pose.flexion)
    down = np.array([0.0, 0.0, -1.0])
    femur_axis = np.array([ox, oy, -np.sqrt(lf ** 2 - ox ** 2 - oy ** 2)]) / lf
    tibia_axis = np.array([-ox, -oy, -np.sqrt(lt ** 2 - ox ** 2 - oy ** 2)]) / lt
    r_thigh = _turn(down, femur_axis)
    r_shank = _turn(down, tibia_axis) @ rotation_about(down, -pose.tibial_torsion)
    r_leg = (rotation_about([0.0, 0.0, 1.0], pose.rotation) @ rotation_about([1.0, 0.0, 0.0], pose.tilt[0])
             @ rotation_about([0.0, 1.0, 0.0], pose.tilt[1]))
    knee = r_thigh @ anatomy.knee
    return {THIGH: (r_leg @ r_thigh, np.zeros(3)), SHANK: (r_leg @ r_shank, r_leg @ (knee - r_shank @ anatomy.knee))}


# ---------------------------------------------------------------------------- the model of a case
@dataclass
class LegModel:
    """The analytic truth behind a case, in world mm: grid, bones (label -> parts), talus, soft tissue, POIs."""

    geometry: ImageGeometry
    dims: LegDims
    pose: LegPose
    bones: Dict[int, List[Primitive]]
    talus: List[Primitive]
    skin: List[Primitive]
    pois: Dict[int, np.ndarray]        # poi id -> world mm, exact (before any move onto the raster)


def _posed(parts, moves, offset: np.ndarray) -> List[Primitive]:
    return [p.moved(moves[group][0], moves[group][1] + offset) for group, p in parts]


def _fit(bones: Dict[int, List[Primitive]], shape: Tuple[int, ...],
         rng: np.random.Generator) -> Tuple[ImageGeometry, np.ndarray]:
    """The grid (somewhere on the scanner's table) and the world position of the femoral head centre, drawn so
    that every bone, given in leg coordinates, lies BORDER_MM (or half a voxel) inside the field."""
    centre = np.array([rng.uniform(40.0, 140.0), rng.uniform(-40.0, 40.0), rng.uniform(-900.0, -300.0)])
    geo = leg_geometry(shape, centre)
    lows, highs = zip(*(p.bounds() for parts in bones.values() for p in parts))
    lo, hi = np.min(lows, axis=0), np.max(highs, axis=0)
    half = np.asarray(FIELD_MM) / 2 - np.maximum(BORDER_MM, geo.spacing / 2)
    first, last = centre - half - lo, centre + half - hi
    if np.any(first > last):
        raise PoiNnunetError(f"the leg ({np.round(hi - lo, 1).tolist()} mm) does not fit a {list(FIELD_MM)} mm field")
    return geo, rng.uniform(first, last)


def leg_model(seed: int, shape: Sequence[int] = DEFAULT_SHAPE) -> LegModel:
    """The anatomy, pose and grid of the case :func:`make_leg_case` makes from the same arguments."""
    shape = check_shape(shape, 3, 16)
    rng_anatomy, rng_grid, _ = child_generators(seed, 3)
    dims = draw_dims(rng_anatomy)
    pose = draw_pose(rng_anatomy)
    anatomy = build_leg(dims)
    moves = pose_transforms(anatomy, dims, pose)
    local = {label: _posed(parts, moves, np.zeros(3)) for label, parts in anatomy.bones.items()}
    geo, hip = _fit(local, shape, rng_grid)
    bones = {label: _posed(parts, moves, hip) for label, parts in anatomy.bones.items()}
    pois = {poi: moves[group][0] @ point + moves[group][1] + hip for poi, (group, point) in anatomy.pois.items()}
    return LegModel(geo, dims, pose, bones, _posed(anatomy.talus, moves, hip), _posed(anatomy.skin, moves, hip), pois)


# ---------------------------------------------------------------------------- raster
def _block(part: Primitive, geo: ImageGeometry, margin: int = 2):
    """Array-order slices of the voxels the part's bounding box may touch (None if it misses the image)."""
    lo, hi = part.bounds()
    corners = np.array([[(lo, hi)[i][0], (lo, hi)[j][1], (lo, hi)[k][2]]
                        for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    idx = geo.world_to_array(corners)
    first = np.maximum(np.floor(idx.min(axis=0)).astype(int) - margin, 0)
    last = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + margin + 1, geo.size[::-1])
    if np.any(last <= first):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(first, last))


def _world_coordinates(geo: ImageGeometry, block) -> Tuple[np.ndarray, ...]:
    """World (x, y, z) of every voxel centre of ``block``, as broadcastable float32 arrays."""
    m, o = geo.index_to_world_matrix, geo.origin
    zz, yy, xx = (np.arange(s.start, s.stop, dtype=np.float64) for s in block)
    zz, yy, xx = zz[:, None, None], yy[None, :, None], xx[None, None, :]
    return tuple((o[k] + m[k, 0] * xx + m[k, 1] * yy + m[k, 2] * zz).astype(np.float32) for k in range(3))


def _union_sdf(parts: Sequence[Primitive], geo: ImageGeometry) -> np.ndarray:
    out = np.full(geo.size[::-1], FAR, dtype=np.float32)
    for part in parts:
        block = _block(part, geo)
        if block is not None:
            out[block] = np.minimum(out[block], part.sdf(*_world_coordinates(geo, block)))
    return out


@dataclass
class LegRaster:
    """Numpy (z, y, x) arrays: labels (uint8), distance to the nearest bone incl. the talus, to the skin (mm)."""

    labels: np.ndarray
    bone_sdf: np.ndarray
    skin_sdf: np.ndarray


def rasterise_leg(model: LegModel) -> LegRaster:
    """A voxel belongs to the bone whose analytic shape holds its centre (the deepest one where two touch)."""
    geo = model.geometry
    nearest = np.full(geo.size[::-1], FAR, dtype=np.float32)
    owner = np.zeros(geo.size[::-1], dtype=np.uint8)
    for label in sorted(model.bones):
        d = _union_sdf(model.bones[label], geo)
        closer = d < nearest
        nearest[closer], owner[closer] = d[closer], label
    labels = np.where(nearest < 0, owner, 0).astype(np.uint8)
    missing = [BONE_NAMES[b] for b in sorted(model.bones) if not (labels == b).any()]
    if missing:
        raise PoiNnunetError(f"{', '.join(missing)} covers no voxel centre of a {list(geo.size[::-1])} grid: "
                             "use a larger shape")
    bone = np.minimum(nearest, _union_sdf(model.talus, geo))
    skin = np.minimum(_union_sdf(model.skin, geo), bone - 4.0)   # bones never stick out of the leg
    return LegRaster(labels, bone, skin)


def place_pois(model: LegModel, labels: np.ndarray) -> Dict[int, np.ndarray]:
    """POI id -> world mm: the exact point, or, where no voxel centre of its bone lies within SNAP_VOXELS of it
    along every axis, the point moved the shortest way (in mm) to where one does."""
    geo, shape = model.geometry, np.array(labels.shape)
    out = {}
    for p in POIS:
        pos = model.pois[p.poi]
        c = geo.world_to_array(pos)
        first = np.maximum(np.ceil(c - SNAP_VOXELS).astype(int), 0)
        last = np.minimum(np.floor(c + SNAP_VOXELS).astype(int), shape - 1)
        near = labels[tuple(slice(a, b + 1) for a, b in zip(first, last))]
        if near.size == 0 or not (near == p.structure).any():
            voxels = np.argwhere(labels == p.structure).astype(np.float64)
            moved = voxels + np.clip(c - voxels, -SNAP_VOXELS, SNAP_VOXELS)       # array order (z, y, x)
            mm = np.linalg.norm((moved - c) * geo.spacing[::-1], axis=1)
            pos = geo.array_to_world(moved[np.argmin(mm)])
        out[p.poi] = pos
    return out


# ---------------------------------------------------------------------------- image
@dataclass(frozen=True)
class CtAppearance:
    """Per-subject Hounsfield values (and fat layer, cortex thickness in mm) and noise of the CT-like image."""

    air: float
    fat: float
    muscle: float
    tissue_variation: float
    fat_thickness: float
    marrow: float
    cortical: float
    cortical_thickness: float
    noise: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "CtAppearance":
        return cls(air=rng.uniform(-1010, -980), fat=rng.uniform(-120, -80), muscle=rng.uniform(30, 60),
                   tissue_variation=rng.uniform(4, 12), fat_thickness=rng.uniform(5, 15), marrow=rng.uniform(120, 280),
                   cortical=rng.uniform(900, 1500), cortical_thickness=rng.uniform(3.0, 6.0), noise=rng.uniform(8, 35))


def ct_intensities(raster: LegRaster, spacing: np.ndarray, look: CtAppearance, rng: np.random.Generator) -> np.ndarray:
    """int16 HU image: air outside the leg, a fat layer under the skin over smoothly varying muscle, bones as a
    cortical shell over marrow, edges blended over about a voxel, Gaussian noise."""
    shape = raster.bone_sdf.shape
    voxel = float(np.prod(spacing) ** (1 / 3))
    coarse = rng.normal(size=tuple(max(2, s // 8) for s in shape))
    field = ndimage.zoom(coarse, [s / c for s, c in zip(shape, coarse.shape)], order=1, grid_mode=True, mode="nearest")
    s = raster.skin_sdf
    fat = np.clip(1.0 + s / np.float32(look.fat_thickness), 0, 1)
    tissue = (np.float32(look.muscle) + np.float32(look.fat - look.muscle) * fat
              + np.float32(look.tissue_variation) * field)
    inside = np.clip(0.5 - s / voxel, 0, 1)
    image = np.float32(look.air) * (1 - inside) + tissue * inside
    d = raster.bone_sdf
    occ = np.clip(0.5 - d / voxel, 0, 1)
    shell = np.clip(1 + np.minimum(d, 0) / np.float32(look.cortical_thickness), 0, 1)
    bone = np.float32(look.marrow) + np.float32(look.cortical - look.marrow) * shell
    image = image * (1 - occ) + bone * occ
    image = image + rng.normal(0, look.noise, size=shape).astype(np.float32)
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16)


# ---------------------------------------------------------------------------- a case
def make_leg_case(case_id: str, seed: int, shape: Sequence[int] = DEFAULT_SHAPE) -> CaseData:
    """One synthetic leg CT: image, label map and the 16 POIs.

    ``shape`` is in numpy order (z, y, x); the field of view stays FIELD_MM,
    so the spacing follows. Same arguments, same case.
    """
    model = leg_model(seed, shape)
    geo = model.geometry
    rng_texture = child_generators(seed, 3)[2]
    raster = rasterise_leg(model)
    ct = ct_intensities(raster, geo.spacing, CtAppearance.draw(rng_texture), rng_texture)
    pois = place_pois(model, raster.labels)
    points = PoiSet([Poi(p.structure, p.poi, tuple(float(c) for c in pois[p.poi])) for p in POIS])
    image = geo.apply_to(sitk.GetImageFromArray(ct))
    label = geo.apply_to(sitk.GetImageFromArray(raster.labels))
    return CaseData(case_id, [image], label, points)


# ---------------------------------------------------------------------------- a dataset
def write_leg_dataset(target: Path, num_cases: int = 20, seed: int = 0, num_test: int = 0, overwrite: bool = False,
                      **case_options: Any) -> Path:
    """Write a validated dataset folder ``target`` of synthetic leg CTs (see the module docstring)."""
    return write_synthetic_dataset(target, "leg", leg_dataset_json_fields(), make_leg_case, num_cases, num_test, seed,
                                   overwrite, **case_options)


# ---------------------------------------------------------------------------- poi_convert synthetic-leg
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_synthetic_arguments(parser, default_cases=20, default_shape=DEFAULT_SHAPE, shape_axes="Z Y X")


def run(args: argparse.Namespace) -> Path:
    return write_leg_dataset(output_folder(args), num_cases=args.cases, seed=args.seed, num_test=args.test_cases,
                             overwrite=args.overwrite, shape=tuple(args.shape))
