"""The bones of the synthetic leg phantom: implicit shapes, per-subject sizes and the 16 POIs, in the anatomy frame.

The anatomy frame is in millimetres with LPS axes for an upright left leg:
``x`` towards the patient's left (lateral for this leg, so medial is ``-x``),
``y`` posterior, ``z`` superior; the origin is the centre of the femoral head
and the knee centre lies straight below it at ``(0, 0, -femur_length)``. The
femur and patella belong to the thigh, the tibia, fibula and (unlabelled)
talus to the shank; :mod:`dataset_conversion.synthetic_leg` bends the knee,
poses the leg and rasterises it. Every part is a union member of its bone.

POIs are exact points of the shapes: a sphere's centre or pole, the end cap
of a capsule, the pole of an ellipsoid, a point of a flat articular face, so
each is inside or on the surface of its own bone and outside every other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .synthetic_common import rotation_about

FEMUR, PATELLA, TIBIA, FIBULA = 1, 2, 3, 4
BONE_NAMES: Dict[int, str] = {FEMUR: "femur", PATELLA: "patella", TIBIA: "tibia", FIBULA: "fibula"}
THIGH, SHANK = "thigh", "shank"   # the two rigid groups the knee bends between
JOINT_GAP_MM = 2.0                # each of femur and tibia stops this far from the knee's joint line

Bounds = Tuple[np.ndarray, np.ndarray]


# ---------------------------------------------------------------------------- primitives
def _floats(v: Sequence[float]) -> Tuple[float, ...]:
    return tuple(float(c) for c in v)


def _local(x, y, z, centre: Sequence[float], axes: np.ndarray):
    """Coordinates in a frame with origin ``centre`` and axes the columns of ``axes`` (python floats keep
    float32 blocks float32)."""
    cx, cy, cz = _floats(centre)
    a = np.asarray(axes, dtype=np.float64).tolist()
    dx, dy, dz = x - cx, y - cy, z - cz
    return tuple(dx * a[0][j] + dy * a[1][j] + dz * a[2][j] for j in range(3))


@dataclass(frozen=True)
class Sphere:
    """Ball (femoral head, fibular head, lesser trochanter). The distance is exact."""

    centre: Tuple[float, float, float]
    radius: float

    def sdf(self, x, y, z):
        cx, cy, cz = _floats(self.centre)
        return np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) - float(self.radius)

    def bounds(self) -> Bounds:
        c = np.asarray(self.centre, dtype=np.float64)
        return c - self.radius, c + self.radius

    def moved(self, rotation: np.ndarray, offset: np.ndarray) -> "Sphere":
        return Sphere(_floats(offset + rotation @ np.asarray(self.centre)), self.radius)


@dataclass(frozen=True)
class RoundCone:
    """Segment ``a``-``b`` thickened by a radius going linearly from ``ra`` to ``rb`` (a capsule when equal).

    The value is ``|p - c(t)| - r(t)`` with ``c(t)`` the nearest point of the
    segment: exact for a capsule, a close approximation for the gentle tapers
    used here; the end caps are half balls, so ``b + rb * e`` is on the surface
    for any unit ``e`` pointing away from the segment.
    """

    a: Tuple[float, float, float]
    b: Tuple[float, float, float]
    ra: float
    rb: float

    def sdf(self, x, y, z):
        ax, ay, az = _floats(self.a)
        bx, by, bz = (float(v) - w for v, w in zip(self.b, (ax, ay, az)))
        px, py, pz = x - ax, y - ay, z - az
        t = np.clip((px * bx + py * by + pz * bz) / (bx * bx + by * by + bz * bz), 0.0, 1.0)
        radius = float(self.ra) + t * (float(self.rb) - float(self.ra))
        return np.sqrt((px - t * bx) ** 2 + (py - t * by) ** 2 + (pz - t * bz) ** 2) - radius

    def bounds(self) -> Bounds:
        a, b = np.asarray(self.a, dtype=np.float64), np.asarray(self.b, dtype=np.float64)
        return np.minimum(a - self.ra, b - self.rb), np.maximum(a + self.ra, b + self.rb)

    def moved(self, rotation: np.ndarray, offset: np.ndarray) -> "RoundCone":
        a, b = (_floats(offset + rotation @ np.asarray(p)) for p in (self.a, self.b))
        return RoundCone(a, b, self.ra, self.rb)


@dataclass(frozen=True)
class Ellipsoid:
    """Ellipsoid with semi-axes ``radii`` along the columns of ``axes`` (condyles, patella, malleolus, talus).

    The value is the usual first-order estimate ``k0 (k0 - 1) / k1``: its zero
    set is the ellipsoid exactly, so a pole ``centre +- r_j axes[:, j]`` is on
    the surface; the magnitude is approximate.
    """

    centre: Tuple[float, float, float]
    axes: np.ndarray
    radii: Tuple[float, float, float]

    def sdf(self, x, y, z):
        u = _local(x, y, z, self.centre, self.axes)
        r = _floats(self.radii)
        k0 = np.sqrt(sum((u[j] / r[j]) ** 2 for j in range(3)))
        k1 = np.sqrt(sum((u[j] / (r[j] * r[j])) ** 2 for j in range(3)))
        return np.where(k1 > 1e-9, k0 * (k0 - 1.0) / np.maximum(k1, 1e-9), -min(r))

    def pole(self, axis: int, sign: float) -> np.ndarray:
        return np.asarray(self.centre) + sign * self.radii[axis] * np.asarray(self.axes)[:, axis]

    def bounds(self) -> Bounds:
        half = np.sqrt(((np.asarray(self.axes) * np.asarray(self.radii)[None, :]) ** 2).sum(axis=1))
        return np.asarray(self.centre) - half, np.asarray(self.centre) + half

    def moved(self, rotation: np.ndarray, offset: np.ndarray) -> "Ellipsoid":
        return Ellipsoid(_floats(offset + rotation @ np.asarray(self.centre)), rotation @ np.asarray(self.axes),
                         self.radii)


@dataclass(frozen=True)
class EllipticSlab:
    """Elliptic cylinder of height ``2 * half_height`` along the third column of ``axes`` (tibial plateau and
    plafond): flat end faces, so a point of an end face is on the surface exactly."""

    centre: Tuple[float, float, float]
    axes: np.ndarray
    radii: Tuple[float, float]
    half_height: float

    def sdf(self, x, y, z):
        u = _local(x, y, z, self.centre, self.axes)
        rx, ry = _floats(self.radii)
        radial = (np.sqrt((u[0] / rx) ** 2 + (u[1] / ry) ** 2) - 1.0) * min(rx, ry)
        axial = np.abs(u[2]) - float(self.half_height)
        outside = np.sqrt(np.maximum(radial, 0) ** 2 + np.maximum(axial, 0) ** 2)
        return outside + np.minimum(np.maximum(radial, axial), 0)

    def bounds(self) -> Bounds:
        a = np.asarray(self.axes, dtype=np.float64)
        half = np.hypot(a[:, 0] * self.radii[0], a[:, 1] * self.radii[1]) + np.abs(a[:, 2]) * self.half_height
        return np.asarray(self.centre) - half, np.asarray(self.centre) + half

    def moved(self, rotation: np.ndarray, offset: np.ndarray) -> "EllipticSlab":
        return EllipticSlab(_floats(offset + rotation @ np.asarray(self.centre)), rotation @ np.asarray(self.axes),
                            self.radii, self.half_height)


Primitive = Sphere | RoundCone | Ellipsoid | EllipticSlab


def _unit(v: Sequence[float]) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


# ---------------------------------------------------------------------------- the POIs
@dataclass(frozen=True)
class PoiDef:
    poi: int
    name: str
    structure: int
    joint: str        # "hip", "knee" or "ankle": no POI lies on a shaft
    description: str


POIS: Tuple[PoiDef, ...] = (
    PoiDef(1, "femoral_head_centre", FEMUR, "hip", "centre of the spherical femoral head (inside the bone)"),
    PoiDef(2, "greater_trochanter_tip", FEMUR, "hip", "superior tip of the greater trochanter"),
    PoiDef(3, "lesser_trochanter_tip", FEMUR, "hip", "posteromedial apex of the lesser trochanter"),
    PoiDef(4, "medial_femoral_condyle", FEMUR, "knee", "most distal point of the medial condyle"),
    PoiDef(5, "lateral_femoral_condyle", FEMUR, "knee", "most distal point of the lateral condyle"),
    PoiDef(6, "intercondylar_notch", FEMUR, "knee", "roof of the intercondylar notch, between the condyles"),
    PoiDef(7, "patella_base", PATELLA, "knee", "superior pole of the patella"),
    PoiDef(8, "patella_apex", PATELLA, "knee", "inferior pole of the patella"),
    PoiDef(9, "patella_centre", PATELLA, "knee", "centre of the patella (inside the bone)"),
    PoiDef(10, "medial_tibial_plateau", TIBIA, "knee", "centre of the medial plateau's articular surface"),
    PoiDef(11, "lateral_tibial_plateau", TIBIA, "knee", "centre of the lateral plateau's articular surface"),
    PoiDef(12, "tibial_tuberosity", TIBIA, "knee", "most anterior point of the tibial tuberosity"),
    PoiDef(13, "tibial_plafond_centre", TIBIA, "ankle", "centre of the distal articular surface (ankle joint)"),
    PoiDef(14, "medial_malleolus_tip", TIBIA, "ankle", "distal tip of the medial malleolus"),
    PoiDef(15, "fibular_head_apex", FIBULA, "knee", "superior apex of the fibular head"),
    PoiDef(16, "lateral_malleolus_tip", FIBULA, "ankle", "distal tip of the lateral malleolus"),
)


# ---------------------------------------------------------------------------- one subject
@dataclass(frozen=True)
class LegDims:
    """A subject's sizes: lengths in mm, angles in degrees; ``width`` scales every transverse size and the
    knee and ankle blocks, ``girth`` the soft tissue. The defaults are a small adult (hip to ankle 680 mm)."""

    femur_length: float = 370.0     # head centre to knee centre
    tibia_length: float = 310.0     # knee centre to the centre of the plafond
    width: float = 1.0
    neck_length: float = 40.0       # head centre to the shaft axis
    neck_shaft_angle: float = 128.0
    anteversion: float = 12.0       # forward turn of the neck about the shaft
    patella_height: float = 0.0     # mm above its usual place (alta > 0, baja < 0)
    patella_tilt: float = 4.0       # sagittal tilt, the apex turned posteriorly for > 0
    girth: float = 1.05


def draw_dims(rng: np.random.Generator) -> LegDims:
    """Per subject: overall size 0.92-1.06 with femur and tibia +-3 % on their own, width +-4 %, neck-shaft
    angle 123-135, anteversion 4-20, patella height +-4 mm and tilt -4..12, soft-tissue girth 0.95-1.25."""
    size = rng.uniform(0.92, 1.06)
    width = size * rng.uniform(0.96, 1.04)
    return LegDims(femur_length=370.0 * size * rng.uniform(0.97, 1.03),
                   tibia_length=310.0 * size * rng.uniform(0.97, 1.03), width=width,
                   neck_length=40.0 * width * rng.uniform(0.93, 1.07), neck_shaft_angle=rng.uniform(123.0, 135.0),
                   anteversion=rng.uniform(4.0, 20.0), patella_height=rng.uniform(-4.0, 4.0),
                   patella_tilt=rng.uniform(-4.0, 12.0), girth=rng.uniform(0.95, 1.25))


@dataclass
class LegAnatomy:
    """A subject's leg, straight, in the anatomy frame: each part with its rigid group, and each POI.

    ``bones[label]`` and ``talus`` / ``skin`` are lists of ``(group, primitive)``;
    ``pois[poi]`` is ``(group, point)``; ``knee`` is the pivot the shank turns about.
    """

    bones: Dict[int, List[Tuple[str, Primitive]]]
    talus: List[Tuple[str, Primitive]]
    skin: List[Tuple[str, Primitive]]
    pois: Dict[int, Tuple[str, np.ndarray]]
    knee: np.ndarray
    ankle: np.ndarray


def _neck_and_shaft(d: LegDims, distal: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upward shaft axis ``u``, lateral ``lat`` (perpendicular to it in the frontal plane) and the neck's base
    ``s0`` on the shaft axis, such that the neck meets the shaft at the neck-shaft angle and the shaft runs on
    to ``distal``. Solved by a few fixed-point steps (the shaft leans 5-7 degrees, so they converge at once)."""
    u = np.array([0.0, 0.0, 1.0])
    a = np.radians(180.0 - d.neck_shaft_angle)
    beta = np.radians(d.anteversion)
    for _ in range(8):
        lat = _unit([u[2], 0.0, -u[0]])
        neck = np.cos(a) * u + np.sin(a) * (-np.cos(beta) * lat - np.sin(beta) * np.array([0.0, 1.0, 0.0]))
        s0 = -d.neck_length * neck
        u = _unit(s0 - distal)
    return u, _unit([u[2], 0.0, -u[0]]), s0


def build_leg(d: LegDims) -> LegAnatomy:
    """The straight leg of a subject (see the module docstring for the frame)."""
    w, eye = d.width, np.eye(3)
    ey, ez = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0])
    head = np.zeros(3)
    knee = np.array([0.0, 0.0, -d.femur_length])
    ankle = knee - d.tibia_length * ez
    gap = JOINT_GAP_MM

    # femur: head on a neck, trochanters, shaft, distal metaphysis and two condyles
    u, lat, s0 = _neck_and_shaft(d, knee + np.array([0.0, 0.0, 48.0 * w]))
    r_head = 19.0 * w
    trochanter = RoundCone(_floats(s0 + 12 * w * lat - 28 * w * u), _floats(s0 + 12 * w * lat + 8 * w * u + 3 * w * ey),
                           13.0 * w, 12.0 * w)
    medial_back = _unit(-0.75 * lat + 0.66 * ey)   # the lesser trochanter points posteromedially
    lesser = Sphere(_floats(s0 - 38 * w * u + 11 * w * medial_back), 7.0 * w)
    metaphysis = Ellipsoid(_floats(knee + [0.0, 3 * w, 40 * w]), eye, (31 * w, 21 * w, 30 * w))
    condyles = [Ellipsoid(_floats(knee + [side * 18 * w, 5 * w, gap + 19 * w]), eye, (12.5 * w, 23 * w, 19 * w))
                for side in (-1.0, 1.0)]                                          # medial (-x), lateral (+x)
    femur = [Sphere(_floats(head), r_head), RoundCone(_floats(head), _floats(s0), 11.5 * w, 13.0 * w), trochanter,
             lesser, RoundCone(_floats(s0 + 5 * w * u), _floats(knee + [0.0, 0.0, 48 * w]), 13.0 * w, 12.0 * w),
             metaphysis, *condyles]
    notch_xy = np.array([0.0, 10 * w])                                            # the roof: metaphysis underside
    m_c, m_r = np.asarray(metaphysis.centre), metaphysis.radii
    roof_z = m_c[2] - m_r[2] * np.sqrt(1.0 - ((notch_xy[1] - m_c[1]) / m_r[1]) ** 2 - (notch_xy[0] / m_r[0]) ** 2)
    patella = Ellipsoid(_floats(knee + [1 * w, -29 * w, 31 * w + d.patella_height]),
                        rotation_about([1.0, 0.0, 0.0], d.patella_tilt), (18 * w, 8.5 * w, 19 * w))

    # tibia: plateau, metaphyses, shaft, tuberosity, plafond and medial malleolus; fibula beside it
    plateau = EllipticSlab(_floats(knee + [0.0, 4 * w, -gap - 11 * w]), eye, (33 * w, 23 * w), 11 * w)
    tuberosity = Ellipsoid(_floats(knee + [2 * w, -13 * w, -34 * w]), eye, (8 * w, 6 * w, 11 * w))
    plafond = EllipticSlab(_floats(ankle + [0.0, 0.0, 8 * w]), eye, (20 * w, 17 * w), 8 * w)
    malleolus_m = RoundCone(_floats(ankle + [-14 * w, 2 * w, 14 * w]), _floats(ankle + [-15 * w, 2 * w, -5 * w]),
                            8.0 * w, 6.5 * w)
    tibia = [plateau,
             RoundCone(_floats(knee + [0.0, 5 * w, -24 * w]), _floats(knee + [0.0, 6 * w, -85 * w]), 20 * w, 11 * w),
             RoundCone(_floats(knee + [0.0, 6 * w, -70 * w]), _floats(ankle + [0.0, 2 * w, 60 * w]), 11 * w, 10 * w),
             RoundCone(_floats(ankle + [0.0, 2 * w, 70 * w]), _floats(ankle + [0.0, 0.0, 22 * w]), 10 * w, 16 * w),
             tuberosity, plafond, malleolus_m]
    fibular_head = Sphere(_floats(knee + [31 * w, 15 * w, -34 * w]), 8.5 * w)
    malleolus_l = Ellipsoid(_floats(ankle + [28 * w, 8 * w, -6 * w]), eye, (7 * w, 9 * w, 13 * w))
    fibula = [fibular_head, RoundCone(fibular_head.centre, _floats(ankle + [27 * w, 9 * w, 14 * w]), 5.5 * w, 5.0 * w),
              malleolus_l]
    talus = [Ellipsoid(_floats(ankle + [0.0, -6 * w, -15 * w]), eye, (14 * w, 22 * w, 14 * w))]

    # soft tissue: a chain of tapered cylinders, thigh to foot (it runs on below the image)
    g = d.girth
    hip_top, knee_mid = np.array([14 * w, 4 * w, 50 * w]), knee + [0.0, 6 * w, 0.0]
    calf, above_ankle = knee + [0.0, 18 * w, -120 * w], ankle + [4 * w, 3 * w, 60 * w]
    skin = [(THIGH, RoundCone(_floats(hip_top), _floats(knee_mid), 62 * g, 50 * g)),
            (SHANK, RoundCone(_floats(knee_mid), _floats(calf), 50 * g, 52 * g)),
            (SHANK, RoundCone(_floats(calf), _floats(above_ankle), 52 * g, 38 * g)),
            (SHANK, RoundCone(_floats(above_ankle), _floats(ankle + [4 * w, 0.0, -400.0]), 38 * g, 38 * g))]

    pois = {
        1: (THIGH, head),
        2: (THIGH, np.asarray(trochanter.b) + trochanter.rb * ez),
        3: (THIGH, np.asarray(lesser.centre) + lesser.radius * medial_back),
        4: (THIGH, condyles[0].pole(2, -1.0)),
        5: (THIGH, condyles[1].pole(2, -1.0)),
        6: (THIGH, np.array([notch_xy[0], notch_xy[1], roof_z])),
        7: (THIGH, patella.pole(2, 1.0)),
        8: (THIGH, patella.pole(2, -1.0)),
        9: (THIGH, np.asarray(patella.centre)),
        10: (SHANK, knee + [-17 * w, 4 * w, -gap]),
        11: (SHANK, knee + [17 * w, 4 * w, -gap]),
        12: (SHANK, tuberosity.pole(1, -1.0)),
        13: (SHANK, ankle.copy()),
        14: (SHANK, np.asarray(malleolus_m.b) - malleolus_m.rb * ez),
        15: (SHANK, np.asarray(fibular_head.centre) + fibular_head.radius * ez),
        16: (SHANK, malleolus_l.pole(2, -1.0)),
    }
    bones = {FEMUR: [(THIGH, p) for p in femur], PATELLA: [(THIGH, patella)],
             TIBIA: [(SHANK, p) for p in tibia], FIBULA: [(SHANK, p) for p in fibula]}
    return LegAnatomy(bones, [(SHANK, p) for p in talus], skin, pois, knee, ankle)
