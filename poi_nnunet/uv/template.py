"""uv(w) templates: one mean shape per structure, and the normalised coordinate frame it defines.

DenseSeg (seed 001, section 2.1.1) gives every voxel of a structure the *template coordinate* of
its anatomical correspondent, normalised to ``[-1, 1]`` over the template's axis-aligned bounding
box: ``uv`` in 2D, ``uvw`` in 3D. A template is the Procrustes mean of the structure's training POIs
in mm (planned by :func:`planners.poi_plan.uv_templates`), in the configuration's axes (nnU-Net's
transposed array axes, as ``patch_size`` and ``spacing``), so a prediction needs nothing but the plans
to turn a predicted uv back into a template point, or any template point into a uv to look for.

The plans hold the templates as ``poi.uv_templates`` (see :meth:`UvTemplates.to_block`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple

import numpy as np

BLOCK_DECIMALS = 4  # 0.1 micrometre: rounding moves a POI's uv by far less than 1e-3
MIN_EXTENT_FRACTION = 0.05  # an axis of the box spans at least 5% of the largest (a flat template)
MIN_EXTENT_MM = 1e-3  # the box of a template whose points all coincide


@dataclass(frozen=True, eq=False)  # an array field: compared by identity
class UvTemplate:
    """The template of one structure label: its POI ids and their mean positions.

    ``points_mm`` ``(P, D)``: mm in the configuration's axes, row ``i`` the mean position of POI
    ``pois[i]``. The uv frame is the box ``centre +- half_extent`` (per axis), where an axis whose points
    barely spread (a flat structure) is widened to :data:`MIN_EXTENT_FRACTION` of the largest extent, so
    that ``to_uv`` never divides by (almost) zero.
    """

    structure: int
    pois: Tuple[int, ...]
    points_mm: np.ndarray  # (P, D)

    def __post_init__(self) -> None:
        points = np.array(self.points_mm, dtype=np.float64).reshape(len(self.pois), -1)
        if not np.isfinite(points).all():
            raise ValueError(f"template of structure {self.structure}: non-finite points")
        points.setflags(write=False)
        object.__setattr__(self, "points_mm", points)
        object.__setattr__(self, "pois", tuple(int(p) for p in self.pois))
        object.__setattr__(self, "structure", int(self.structure))

    @property
    def dim(self) -> int:
        return int(self.points_mm.shape[1])

    @property
    def box_min(self) -> np.ndarray:
        """``(D,)`` lower corner (mm) of the uv frame's box, after the degenerate-extent guard."""
        return self.centre - self.half_extent

    @property
    def box_max(self) -> np.ndarray:
        """``(D,)`` upper corner (mm) of the uv frame's box, after the degenerate-extent guard."""
        return self.centre + self.half_extent

    @property
    def centre(self) -> np.ndarray:
        """``(D,)`` centre (mm) of the points' bounding box."""
        return (self.points_mm.min(0) + self.points_mm.max(0)) / 2

    @property
    def half_extent(self) -> np.ndarray:
        """``(D,)`` half side (mm) of the uv box per axis, each at least :data:`MIN_EXTENT_FRACTION` of the
        largest (and at least :data:`MIN_EXTENT_MM` / 2)."""
        extent = self.points_mm.max(0) - self.points_mm.min(0)
        floor = max(MIN_EXTENT_FRACTION * float(extent.max()), MIN_EXTENT_MM)
        return np.maximum(extent, floor) / 2

    def to_uv(self, points_mm: np.ndarray) -> np.ndarray:
        """Template mm ``(N, D)`` -> uv ``(N, D)``: ``-1`` and ``1`` at the box's faces (NaN stays NaN)."""
        return (np.asarray(points_mm, dtype=np.float64) - self.centre) / self.half_extent

    def from_uv(self, uv: np.ndarray) -> np.ndarray:
        """uv ``(N, D)`` -> template mm ``(N, D)``; the inverse of :meth:`to_uv`."""
        return np.asarray(uv, dtype=np.float64) * self.half_extent + self.centre

    def index(self, poi_ids: Iterable[int]) -> np.ndarray:
        """Row of each of ``poi_ids`` in the template, -1 for an id it does not hold."""
        where = {p: i for i, p in enumerate(self.pois)}
        return np.array([where.get(int(p), -1) for p in poi_ids], dtype=int)

    def uv_of(self, poi_ids: Sequence[int]) -> np.ndarray:
        """``(N, D)`` uv of POI ids (a NaN row for an id the template does not hold)."""
        rows = self.index(poi_ids)
        out = np.full((len(rows), self.dim), np.nan)
        known = rows >= 0
        out[known] = self.to_uv(self.points_mm[rows[known]])
        return out

    def to_block(self) -> Dict[str, Any]:
        return {"structure": self.structure, "pois": list(self.pois),
                "points_mm": [[round(float(v), BLOCK_DECIMALS) for v in row] for row in self.points_mm]}

    @classmethod
    def from_block(cls, block: Mapping[str, Any]) -> "UvTemplate":
        return cls(int(block["structure"]), tuple(int(p) for p in block["pois"]),
                   np.asarray(block["points_mm"], dtype=np.float64))


@dataclass(frozen=True)
class UvTemplates:
    """The plans' templates, one per structure label (ordered by label)."""

    templates: Tuple[UvTemplate, ...]

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.templates, key=lambda t: t.structure))
        if len({t.structure for t in ordered}) != len(ordered):
            raise ValueError("two uv templates for one structure label")
        if len({t.dim for t in ordered}) > 1:
            raise ValueError("uv templates of different dimensions")
        object.__setattr__(self, "templates", ordered)

    @property
    def dim(self) -> int:
        """Number of uv channels (the configuration's axes)."""
        return self.templates[0].dim if self.templates else 0

    @property
    def structures(self) -> Tuple[int, ...]:
        return tuple(t.structure for t in self.templates)

    def for_structure(self, label: int) -> Optional[UvTemplate]:
        """The template of a structure label, None where the plans have none for it."""
        for template in self.templates:
            if template.structure == int(label):
                return template
        return None

    def __len__(self) -> int:
        return len(self.templates)

    def __iter__(self) -> Iterator[UvTemplate]:
        return iter(self.templates)

    def to_block(self) -> Dict[str, Any]:
        """``{"space": ..., "templates": [{"structure": int, "pois": [int], "points_mm": [[float] * D]}]}``."""
        return {"space": "mm, the configuration's axes; uv = -1..1 over each template's bounding box",
                "templates": [t.to_block() for t in self.templates]}

    @classmethod
    def from_block(cls, block: Optional[Mapping[str, Any]]) -> Optional["UvTemplates"]:
        """The templates of a ``uv_templates`` block; None for plans without one (or with none in it)."""
        if not block or not block.get("templates"):
            return None
        return cls(tuple(UvTemplate.from_block(t) for t in block["templates"]))
