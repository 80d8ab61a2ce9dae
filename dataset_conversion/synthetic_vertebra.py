"""One synthetic vertebra: its parts as implicit shapes and its POIs on their surface, in its own frame.

The frame is anatomical and in millimetres: origin at the centre of the
vertebral body, ``x`` towards the patient's left, ``y`` posterior, ``z``
superior (the LPS axes of an upright, unrotated vertebra). The spine module
places and rotates whole vertebrae; this module knows only the shape of one.

Parts carry the TPTBox subregion ``Location`` they stand for (corpus, arcus,
spinous, costal and articular processes), so the subregion mask channel uses
the same values as TPTBox subregion files. POIs use TPTBox ``Location`` ids
and are found by casting a ray from inside a part to the union's surface,
the way TPTBox's own line-cast strategies find them on real masks.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Dict, List, Tuple

import numpy as np
from TPTBox.core.vert_constants import Location

from .synthetic_shapes import (Capsule, EllipticCylinder, ExtrudedCapsule, RoundedBox, Shape, surface_along_rays,
                               union_bounds)

L = Location

# x offset of the "Left"/"Right" copies of the median body points, as a fraction of the body's half width
# (TPTBox shifts its median sagittal cut sideways for POIs 109-124).
SIDE_SHIFT = 0.3


@dataclass(frozen=True)
class VertebraDims:
    """Sizes in mm (angles in degrees) of one vertebra; defaults are an average adult L3."""

    body_half_width: float = 22.0
    body_half_depth: float = 16.0
    body_half_height: float = 13.0
    canal_depth: float = 16.0
    pedicle_radius: float = 4.5
    lamina_radius: float = 3.5
    process_radius: float = 3.5
    spinous_length: float = 28.0
    spinous_half_height: float = 7.0
    spinous_half_thickness: float = 2.5
    spinous_angle: float = 20.0      # downward tilt of the spinous process from the posterior axis
    transverse_length: float = 24.0
    transverse_angle: float = 12.0   # backward sweep of the transverse processes from the lateral axis
    articular_height: float = 16.0

    def scaled(self, factor: float) -> "VertebraDims":
        """All lengths times ``factor``; angles unchanged."""
        return replace(self, **{f.name: getattr(self, f.name) * factor
                                for f in fields(self) if not f.name.endswith("angle")})


@dataclass(frozen=True)
class Part:
    name: str
    subregion: int  # TPTBox Location value of the subregion this part belongs to
    shape: Shape


def vertebra_parts(d: VertebraDims) -> List[Part]:
    """The bony parts of a vertebra, each a primitive whose subregion is a TPTBox Location."""
    a, b, h, c = d.body_half_width, d.body_half_depth, d.body_half_height, d.canal_depth
    x_ped = 0.62 * a                       # pedicles leave the body's posterior-lateral wall
    ped_end = (x_ped + 0.07 * a, b + 0.75 * c)
    lam_mid_y = b + c + d.lamina_radius    # lamina's midline: just behind the canal
    z_ped = 0.25 * h
    parts: List[Part] = [Part("corpus", L.Vertebra_Corpus.value, EllipticCylinder((0, 0, 0), (a, b), h))]
    for side, name in ((1, "left"), (-1, "right")):
        px, py = side * ped_end[0], ped_end[1]
        parts.append(Part(f"pedicle_{name}", L.Arcus_Vertebrae.value,
                          Capsule((side * x_ped, 0.55 * b, z_ped), (px, py, z_ped), d.pedicle_radius)))
        parts.append(Part(f"lamina_{name}", L.Arcus_Vertebrae.value,
                          ExtrudedCapsule((px, py), (0.0, lam_mid_y), d.lamina_radius, (-0.75 * h, 0.45 * h))))
        sweep = np.radians(d.transverse_angle)
        tp_start = (px, py - 0.15 * c, 0.25 * h)
        tp_end = (px + side * d.transverse_length * np.cos(sweep), tp_start[1] + d.transverse_length * np.sin(sweep),
                  0.3 * h)
        parts.append(Part(f"transverse_{name}", (L.Costal_Process_Left if side > 0 else L.Costal_Process_Right).value,
                          Capsule(tp_start, tp_end, d.process_radius)))
        x_sa = px + side * 0.1 * c
        parts.append(Part(f"superior_articular_{name}",
                          (L.Superior_Articular_Left if side > 0 else L.Superior_Articular_Right).value,
                          Capsule((x_sa, py + 1.0, 0.3 * h), (x_sa, py + 3.0, 0.3 * h + d.articular_height),
                                  d.process_radius)))
        x_ia = 0.5 * px
        parts.append(Part(f"inferior_articular_{name}",
                          (L.Inferior_Articular_Left if side > 0 else L.Inferior_Articular_Right).value,
                          Capsule((x_ia, lam_mid_y - 1.0, -0.5 * h), (x_ia, lam_mid_y + 1.0, -0.5 * h - d.articular_height),
                                  d.process_radius)))
    tilt = np.radians(d.spinous_angle)
    along = np.array([0.0, np.cos(tilt), -np.sin(tilt)])
    across = np.array([0.0, np.sin(tilt), np.cos(tilt)])
    root = np.array([0.0, lam_mid_y + 0.5 * d.lamina_radius, -0.15 * h])
    parts.append(Part("spinous", L.Spinosus_Process.value, RoundedBox(
        tuple(root + 0.5 * d.spinous_length * along), np.stack([along, [1.0, 0, 0], across], axis=1),
        (0.5 * d.spinous_length, d.spinous_half_thickness, d.spinous_half_height), 0.8 * d.spinous_half_thickness)))
    return parts


def parts_sdf(parts: List[Part], x, y, z) -> Tuple[np.ndarray, np.ndarray]:
    """Union distance of all parts and the index of the nearest part, at broadcastable coordinates."""
    best = None
    which = None
    for i, part in enumerate(parts):
        d = part.shape.sdf(x, y, z)
        if best is None:
            best, which = d, np.zeros(np.shape(d), dtype=np.int16)
        else:
            closer = d < best
            best = np.where(closer, d, best)
            which = np.where(closer, np.int16(i), which)
    return best, which


def local_bounds(parts: List[Part]) -> Tuple[np.ndarray, np.ndarray]:
    return union_bounds([p.shape for p in parts])


def _poi_rays(d: VertebraDims, parts: List[Part]) -> List[Tuple[int, Tuple[float, ...], Tuple[float, ...]]]:
    """(Location, start inside the bone, direction) for every POI, in the vertebra's frame."""
    a, b, h = d.body_half_width, d.body_half_depth, d.body_half_height
    shape = {p.name: p.shape for p in parts}
    rays = [
        (L.Muscle_Inserts_Vertebral_Body_Left, (0, 0, 0), (1, 0, 0)),
        (L.Muscle_Inserts_Vertebral_Body_Right, (0, 0, 0), (-1, 0, 0)),
        (L.Muscle_Inserts_Spinosus_Process, shape["spinous"].centre, tuple(shape["spinous"].axes[:, 0])),
    ]
    body_sets = {
        0.0: (101, 102, 103, 104, 105, 106, 107, 108),   # median sagittal cut
        SIDE_SHIFT: (109, 110, 111, 112, 113, 114, 115, 116),   # shifted to the left (+x)
        -SIDE_SHIFT: (117, 118, 119, 120, 121, 122, 123, 124),  # shifted to the right
    }
    for shift, ids in body_sets.items():
        x0 = shift * a
        depth = b * np.sqrt(1 - shift ** 2)  # half depth of the body at this x
        ant_sup, post_sup, ant_inf, post_inf, mid_sup, post_c, mid_inf, ant_c = ids
        start = (x0, 0.0, 0.0)
        for poi, direction in ((ant_sup, (0, -depth, h)), (post_sup, (0, depth, h)), (ant_inf, (0, -depth, -h)),
                               (post_inf, (0, depth, -h)), (mid_sup, (0, 0, 1)), (post_c, (0, 1, 0)),
                               (mid_inf, (0, 0, -1)), (ant_c, (0, -1, 0))):
            rays.append((L(poi), start, direction))
    for side, name in ((1, "left"), (-1, "right")):
        left = side > 0
        tp = shape[f"transverse_{name}"]
        rays.append((L.Muscle_Inserts_Transverse_Process_Left if left else L.Muscle_Inserts_Transverse_Process_Right,
                     tp.b, (side, 0.3, 0.0)))
        rays.append((L.Muscle_Inserts_Articulate_Process_Superior_Left if left
                     else L.Muscle_Inserts_Articulate_Process_Superior_Right, shape[f"superior_articular_{name}"].b,
                     (0, 0, 1)))
        rays.append((L.Muscle_Inserts_Articulate_Process_Inferior_Left if left
                     else L.Muscle_Inserts_Articulate_Process_Inferior_Right, shape[f"inferior_articular_{name}"].b,
                     (0, 0, -1)))
    # Ligamentum flavum: anterior (canal-facing) surface of the lamina at its upper and lower edge, in the midline.
    lamina = shape["lamina_left"]
    lam_y = lamina.b[1]
    edge = 0.005 * h  # start just inside the straight top/bottom edge so the ray runs along it
    rays.append((L.Ligament_Attachment_Point_Flava_Superior_Median, (0, lam_y, lamina.z_range[1] - edge), (0, -1, 0)))
    rays.append((L.Ligament_Attachment_Point_Flava_Inferior_Median, (0, lam_y, lamina.z_range[0] + edge), (0, -1, 0)))
    return [(int(getattr(loc, "value", loc)), tuple(float(v) for v in start), tuple(float(v) for v in direction))
            for loc, start, direction in rays]


POI_IDS: Tuple[int, ...] = tuple(sorted(loc for loc, _, _ in _poi_rays(VertebraDims(), vertebra_parts(VertebraDims()))))


def vertebra_pois(d: VertebraDims, parts: List[Part]) -> Dict[int, np.ndarray]:
    """Location id -> point on the vertebra's surface (its own frame, mm)."""
    rays = _poi_rays(d, parts)
    ids = [r[0] for r in rays]
    starts = np.array([r[1] for r in rays])
    dirs = np.array([r[2] for r in rays])

    def sdf(points: np.ndarray) -> np.ndarray:
        return parts_sdf(parts, points[:, 0], points[:, 1], points[:, 2])[0]

    lo, hi = local_bounds(parts)
    step = 0.25 * min(d.lamina_radius, d.process_radius)
    found = surface_along_rays(sdf, starts, dirs, float(np.linalg.norm(hi - lo)), step)
    return dict(zip(ids, found))
