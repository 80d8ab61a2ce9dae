"""Rasterising placed implicit objects onto an image grid, and turning distances into CT-like values.

Objects (vertebrae, discs) are evaluated only inside the block of voxels their
bounding box covers, with coordinates computed straight from the grid's
index-to-world matrix, so a rotated, anisotropic grid costs no resampling and
no accuracy: a voxel is bone exactly when its centre is inside the analytic
shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
from scipy import ndimage
from TPTBox.core.vert_constants import Location

from poi_nnunet.geometry import ImageGeometry

from .synthetic_vertebra import Part, VertebraDims, local_bounds, parts_sdf

FAR = np.float32(1e3)  # "no object near": distance value of untouched voxels


@dataclass
class PlacedObject:
    """A set of parts in its own frame, placed in the world: ``world = centre + rotation @ local``."""

    label: int                     # VerSe vertebra id, 0 for a disc
    parts: List[Part]
    rotation: np.ndarray           # columns: the object's x, y, z axes in world coordinates
    centre: np.ndarray             # world mm
    dims: Optional[VertebraDims] = None

    def to_world(self, local: np.ndarray) -> np.ndarray:
        return np.asarray(local, dtype=np.float64) @ self.rotation.T + self.centre

    def to_local(self, world: np.ndarray) -> np.ndarray:
        return (np.asarray(world, dtype=np.float64) - self.centre) @ self.rotation

    def sdf_world(self, world: np.ndarray) -> np.ndarray:
        local = self.to_local(np.atleast_2d(world))
        return parts_sdf(self.parts, local[:, 0], local[:, 1], local[:, 2])[0]

    def world_corners(self) -> np.ndarray:
        """The 8 corners of the local bounding box, in world mm (a conservative hull)."""
        lo, hi = local_bounds(self.parts)
        corners = np.array([[(lo, hi)[i][0], (lo, hi)[j][1], (lo, hi)[k][2]]
                            for i in (0, 1) for j in (0, 1) for k in (0, 1)])
        return self.to_world(corners)


def block_of(obj: PlacedObject, geo: ImageGeometry, margin: int = 2) -> Optional[Tuple[slice, ...]]:
    """Array-order slices of the voxels the object's bounding box may touch (None if outside the image)."""
    idx = geo.world_to_array(obj.world_corners())
    shape = geo.size[::-1]
    lo = np.maximum(np.floor(idx.min(0)).astype(int) - margin, 0)
    hi = np.minimum(np.ceil(idx.max(0)).astype(int) + margin + 1, shape)
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def local_coordinates(obj: PlacedObject, geo: ImageGeometry, block: Tuple[slice, ...]) -> Tuple[np.ndarray, ...]:
    """The object's local (x, y, z) at every voxel centre of ``block``, as float32 arrays."""
    a = obj.rotation.T @ geo.index_to_world_matrix          # local = a @ itk_index + t
    t = obj.rotation.T @ (geo.origin - obj.centre)
    zz, yy, xx = (np.arange(s.start, s.stop, dtype=np.float32) for s in block)
    zz, yy, xx = zz[:, None, None], yy[None, :, None], xx[None, None, :]
    return tuple(np.float32(a[k, 0]) * xx + np.float32(a[k, 1]) * yy + np.float32(a[k, 2]) * zz
                 + np.float32(t[k]) for k in range(3))


@dataclass
class SpineRaster:
    """What rasterising the vertebrae gives, in numpy (z, y, x) order."""

    bone_sdf: np.ndarray    # float32 distance to the nearest vertebra (negative inside)
    labels: np.ndarray      # uint8 VerSe id of the vertebra a voxel belongs to, 0 outside bone
    subregions: np.ndarray  # uint8 TPTBox Location of the part a voxel belongs to, 0 outside bone
    disc_sdf: np.ndarray    # float32 distance to the nearest intervertebral disc
    blocks: dict            # VerSe id -> the block its vertebra was evaluated in


def rasterise_spine(vertebrae: List[PlacedObject], discs: List[PlacedObject], geo: ImageGeometry,
                    corpus_shell: float) -> SpineRaster:
    """Nearest-vertebra labels (overlaps go to the vertebra a voxel is deepest in) and subregions.

    Voxels of the corpus within ``corpus_shell`` mm of its surface get
    ``Vertebra_Corpus_border``, deeper ones ``Vertebra_Corpus``, as in TPTBox
    subregion masks.
    """
    shape = geo.size[::-1]
    bone = np.full(shape, FAR, dtype=np.float32)
    owner = np.zeros(shape, dtype=np.uint8)
    sub = np.zeros(shape, dtype=np.uint8)
    blocks = {}
    for v in vertebrae:
        block = block_of(v, geo)
        if block is None:
            continue
        blocks[v.label] = block
        d, which = parts_sdf(v.parts, *local_coordinates(v, geo, block))
        lut = np.array([p.subregion for p in v.parts], dtype=np.uint8)
        part_sub = lut[which]
        is_corpus = part_sub == Location.Vertebra_Corpus.value
        part_sub[is_corpus & (d > -corpus_shell)] = Location.Vertebra_Corpus_border.value
        closer = d < bone[block]
        bone[block] = np.where(closer, d, bone[block])
        owner[block] = np.where(closer, np.uint8(v.label), owner[block])
        sub[block] = np.where(closer, part_sub, sub[block])
    inside = bone < 0
    disc = np.full(shape, FAR, dtype=np.float32)
    for obj in discs:
        block = block_of(obj, geo)
        if block is not None:
            disc[block] = np.minimum(disc[block], parts_sdf(obj.parts, *local_coordinates(obj, geo, block))[0])
    return SpineRaster(bone, np.where(inside, owner, 0).astype(np.uint8), np.where(inside, sub, 0).astype(np.uint8),
                       disc, blocks)


@dataclass(frozen=True)
class CtAppearance:
    """Per-subject Hounsfield values and noise of the CT-like image."""

    soft_tissue: float
    soft_variation: float
    disc: float
    cancellous: float
    cortical: float
    cortical_thickness: float  # mm over which cortical fades into cancellous bone
    noise: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "CtAppearance":
        return cls(soft_tissue=rng.uniform(10, 50), soft_variation=rng.uniform(4, 15), disc=rng.uniform(70, 120),
                   cancellous=rng.uniform(150, 300), cortical=rng.uniform(550, 1000),
                   cortical_thickness=rng.uniform(1.2, 2.2), noise=rng.uniform(8, 35))


def ct_intensities(raster: SpineRaster, spacing: np.ndarray, look: CtAppearance, rng: np.random.Generator) -> np.ndarray:
    """int16 HU image: smooth soft tissue, brighter discs, a cortical shell over cancellous bone, noise.

    Edges are partial-volume blended over one voxel, so the image carries
    sub-voxel information about where the surface (and so each POI) is.
    """
    shape = raster.bone_sdf.shape
    voxel = float(np.prod(spacing) ** (1 / 3))
    coarse = rng.normal(size=tuple(max(2, s // 12) for s in shape))
    field = ndimage.zoom(coarse, [s / c for s, c in zip(shape, coarse.shape)], order=1, grid_mode=True, mode="nearest")
    image = (look.soft_tissue + look.soft_variation * field).astype(np.float32)
    disc_occ = np.clip(0.5 - raster.disc_sdf / voxel, 0, 1)
    image += disc_occ * np.float32(look.disc - look.soft_tissue)
    d = raster.bone_sdf
    occ = np.clip(0.5 - d / voxel, 0, 1)
    shell = np.clip(1 + np.minimum(d, 0) / look.cortical_thickness, 0, 1)
    bone = np.float32(look.cancellous) + np.float32(look.cortical - look.cancellous) * shell
    image = image * (1 - occ) + bone * occ
    image += rng.normal(0, look.noise, size=shape).astype(np.float32)
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16)
