"""The bones of the synthetic wrist phantom: canonical outlines, landmark parameters and per-case shape variation.

A bone's outline is a closed curve ``t -> (x, y)`` over ``t`` in [0, 1) in the
bone's own frame (mm, local x along the bone towards its distal end): a
superellipse whose half-width is shaped along the bone (a thinner shaft, a
tapering proximal end, a bend for bean-shaped carpals). Landmark ``k`` of a
bone is the point at a fixed parameter ``t_k``; the ``t_k`` are chosen once,
equally spaced by arc length on the canonical outline from its distal tip
(``t = 0``). Per-case variation only moves the curve as a function of ``t``
(affine in the bone frame, low-frequency radial modes, placement), so
landmark ``k`` is the same anatomical point of the bone in every case.

Everything here is in the anatomy frame: millimetres, x towards the image's
right, y downwards (fingers at the top), origin in the carpus. A PA view of a
child's hand: thumb and radius on the left, ulna on the right, the distal
radius and ulna epiphyses still separate ossification centres.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

TOTAL_LANDMARKS = 720
MIN_LANDMARKS = 12          # per bone, however small
DENSE_SAMPLES = 512         # curve samples per bone for arc lengths and rasterising


@dataclass(frozen=True)
class Bone:
    """Canonical shape and place of one bone in the anatomy frame.

    ``half_length``/``half_width`` are the superellipse's semi-axes (mm) along
    and across the bone; ``exponent`` 2 is an ellipse, larger is boxier;
    ``waist`` narrows the middle of the shaft (fraction of the width),
    ``taper`` the proximal end, ``bend`` curves the bone sideways (fraction of
    the half-length); ``angle`` (degrees) turns local x (the distal direction)
    from the image's x axis (-90: pointing to the top of the image).
    """

    name: str
    label: int
    centre: Tuple[float, float]
    angle: float
    half_length: float
    half_width: float
    exponent: float = 2.2
    waist: float = 0.0
    taper: float = 0.0
    bend: float = 0.0


def _metacarpal(name: str, label: int, base: Tuple[float, float], angle: float, half_length: float,
                half_width: float) -> Bone:
    """A metacarpal from where its base sits on the carpus: the centre is half a length further along its axis."""
    direction = np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle))])
    centre = np.asarray(base) + half_length * direction
    return Bone(name, label, (float(centre[0]), float(centre[1])), angle, half_length, half_width,
                exponent=2.6, waist=0.45)


# Label order is painting order: where bones overlap in projection, the higher label is drawn on top.
BONES: Tuple[Bone, ...] = (
    Bone("radius", 1, (-7.5, 26.0), -90, 12.0, 8.5, exponent=3.0, taper=0.4),
    Bone("ulna", 2, (8.5, 26.8), -90, 11.0, 5.0, exponent=3.0, taper=0.3),
    Bone("radius_epiphysis", 3, (-7.5, 10.2), 0, 9.0, 2.7, exponent=2.6, taper=-0.3),
    Bone("ulna_epiphysis", 4, (8.8, 12.8), 0, 4.2, 2.1),
    Bone("scaphoid", 5, (-10.0, 2.5), -55, 5.6, 3.0, bend=0.12),
    Bone("lunate", 6, (-2.0, 3.8), -90, 3.8, 3.4),
    Bone("triquetrum", 7, (5.2, 2.6), -30, 3.6, 2.8),
    Bone("pisiform", 8, (7.8, 4.4), -80, 2.3, 2.0),
    Bone("trapezium", 9, (-12.2, -5.2), -70, 3.9, 3.2),
    Bone("trapezoid", 10, (-6.9, -5.8), -90, 3.0, 2.6),
    Bone("capitate", 11, (-0.5, -4.2), -90, 5.6, 3.2, exponent=2.4),
    Bone("hamate", 12, (5.5, -3.8), -100, 4.7, 3.4, bend=-0.1),
    _metacarpal("metacarpal_1", 13, (-13.6, -7.8), -125, 9.5, 3.0),
    _metacarpal("metacarpal_2", 14, (-7.0, -8.6), -97, 13.5, 2.8),
    _metacarpal("metacarpal_3", 15, (-1.0, -8.8), -90, 13.2, 2.9),
    _metacarpal("metacarpal_4", 16, (5.2, -8.0), -83, 12.0, 2.6),
    _metacarpal("metacarpal_5", 17, (10.4, -6.6), -74, 11.0, 2.6),
)


def canonical_outline(bone: Bone, t: np.ndarray) -> np.ndarray:
    """Points ``(len(t), 2)`` of the bone's outline in its own frame (mm, centred), ``t`` in [0, 1)."""
    theta = 2 * np.pi * np.asarray(t, dtype=np.float64)
    power = 2.0 / bone.exponent
    u = np.sign(np.cos(theta)) * np.abs(np.cos(theta)) ** power    # -1 proximal .. 1 distal
    v = np.sign(np.sin(theta)) * np.abs(np.sin(theta)) ** power
    width = 1.0 - bone.waist * np.exp(-(u / 0.45) ** 2) - bone.taper * (1.0 - u) / 2
    x = bone.half_length * u
    y = bone.half_width * width * v + bone.bend * bone.half_length * (1.0 - u ** 2)
    return np.stack([x, y], axis=1)


def _arc_length_parameters(bone: Bone, count: int) -> np.ndarray:
    """``count`` parameters equally spaced by arc length on the canonical outline, the first at ``t = 0``."""
    t = np.linspace(0.0, 1.0, 8 * DENSE_SAMPLES + 1)
    points = canonical_outline(bone, t)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    return np.interp(arc[-1] * np.arange(count) / count, arc, t)


def perimeter(bone: Bone) -> float:
    """Length (mm) of the canonical outline."""
    points = canonical_outline(bone, np.linspace(0.0, 1.0, 8 * DENSE_SAMPLES + 1))
    return float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum())


def landmark_counts(total: int = TOTAL_LANDMARKS) -> Dict[str, int]:
    """Bone name -> landmark count: in proportion to the canonical perimeter, >= MIN_LANDMARKS, ``total`` in all.

    Largest-remainder rounding, so the counts are fixed by the bone table alone.
    """
    lengths = np.array([perimeter(b) for b in BONES])
    spare = total - MIN_LANDMARKS * len(BONES)
    if spare < 0:
        raise ValueError(f"{total} landmarks cannot give each of {len(BONES)} bones {MIN_LANDMARKS}")
    share = spare * lengths / lengths.sum()
    counts = np.floor(share).astype(int)
    counts[np.argsort(-(share - counts), kind="stable")[: spare - counts.sum()]] += 1
    return {b.name: MIN_LANDMARKS + int(c) for b, c in zip(BONES, counts)}


LANDMARK_COUNTS: Dict[str, int] = landmark_counts()
LANDMARK_PARAMETERS: Dict[str, np.ndarray] = {b.name: _arc_length_parameters(b, LANDMARK_COUNTS[b.name]) for b in BONES}


def poi_ids() -> Dict[str, List[int]]:
    """Bone name -> its POI ids: 1..720 consecutive in label order, the same in every case and dataset."""
    out, first = {}, 1
    for name, count in LANDMARK_COUNTS.items():
        out[name] = list(range(first, first + count))
        first += count
    return out


# ---------------------------------------------------------------------------- per-case variation
def _rotation(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


@dataclass(frozen=True)
class BoneVariation:
    """One case's deviation of a bone from its template (all small, so bones keep their place and look).

    ``modes``: ``(K, 2)`` cosine/sine amplitudes of radial modes 2..K+1
    (fraction of the radius); ``linear``: ``(2, 2)`` the bone-frame affine
    (rotation times anisotropic scale); ``offset``: mm in the anatomy frame.
    """

    modes: np.ndarray
    linear: np.ndarray
    offset: np.ndarray


def draw_variation(rng: np.random.Generator) -> BoneVariation:
    """A bone's variation: rotation +-4 deg, scale 0.94-1.06 per axis, 0.4 mm shift, radial modes 2-4 of ~3 %."""
    orders = np.arange(2, 5)
    modes = rng.normal(0.0, 1.0, size=(len(orders), 2)) * (0.06 / orders)[:, None]
    linear = _rotation(rng.uniform(-4.0, 4.0)) @ np.diag(rng.uniform(0.94, 1.06, size=2))
    return BoneVariation(modes, linear, rng.normal(0.0, 0.4, size=2))


def bone_outline(bone: Bone, variation: BoneVariation, t: np.ndarray) -> np.ndarray:
    """Points ``(len(t), 2)`` of the varied bone at parameters ``t``, in the anatomy frame (mm).

    The radial modes scale each point's distance from the bone's centre by
    ``1 + sum_k a_k cos(2 pi k t) + b_k sin(2 pi k t)``: a smooth, periodic
    dent or bulge that keeps the outline closed and simple.
    """
    t = np.asarray(t, dtype=np.float64)
    local = canonical_outline(bone, t)
    orders = np.arange(2, 2 + len(variation.modes))
    phase = 2 * np.pi * np.outer(t, orders)
    local = local * (1.0 + np.cos(phase) @ variation.modes[:, 0] + np.sin(phase) @ variation.modes[:, 1])[:, None]
    placed = local @ (_rotation(bone.angle) @ variation.linear).T
    return placed + np.asarray(bone.centre) + variation.offset


def dense_parameters(bone: Bone) -> np.ndarray:
    """Sorted parameters of the rasterised polyline: a uniform grid plus the landmarks' own, so they are vertices."""
    return np.union1d(np.linspace(0.0, 1.0, DENSE_SAMPLES, endpoint=False), LANDMARK_PARAMETERS[bone.name])
