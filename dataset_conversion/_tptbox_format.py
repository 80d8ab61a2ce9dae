"""TPTBox POI files (``"format": "POI"`` and ``"POI_GLOBAL"``) to and from world mm (ITK/LPS).

TPTBox stores a two-element list: a header, then ``{region: {subregion: [x, y, z]}}``
where region is the vertebra label and subregion a ``Location`` id (names or
integers as strings; TPTBox resolves them). The two forms differ in what
``[x, y, z]`` means:

* ``POI`` (local): a continuous voxel index of a NIfTI grid. The header carries
  that grid as nibabel sees it: ``direction`` (axis codes), ``zoom``, ``shape``
  and, in files TPTBox writes, ``rotation`` and ``origin`` of the RAS affine
  ``world_ras = rotation @ (zoom * ijk) + origin``. With the grid present the
  points mean the same wherever the file goes; without it (older files) they
  are taken as voxels of the case's image along ``direction``.
* ``POI_GLOBAL``: world millimetres, LPS when ``coordinate_system`` is
  ``"itk"`` and RAS (TPTBox's default) when it is ``"nib"`` or absent.

TPTBox itself parses and converts the files, so this module agrees with it by
construction; it adds errors that name the file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import numpy as np

from poi_nnunet.atomic import atomic_write
from poi_nnunet.errors import InvalidInputError, PathLike, PoiNnunetError, Problem
from poi_nnunet.geometry import ImageGeometry
from poi_nnunet.pois import PoiSet

from ._axis_codes import LPS_TO_RAS, axis_codes, oriented_voxels_to_index, parse_axis_codes, permuted
from ._point_checks import Describe, Entry, checked_pois
from ._tptbox_names import location_name, structure_name

FORMATS = ("POI", "POI_GLOBAL")
COORDINATE_SYSTEMS = {"itk": True, "nib": False}  # TPTBox's names -> "is LPS"


def describe_point(structure: int, poi: int) -> str:
    return f"vertebra {structure} ({structure_name(structure)}), location {poi} ({location_name(poi)})"


def read_tptbox_poi(path: PathLike, geometry: ImageGeometry, describe: Describe = describe_point) -> PoiSet:
    """Points of a TPTBox POI file in world mm (LPS) of the image ``geometry`` belongs to.

    Every point must lie inside that image; each problem names the file and the point.
    """
    path = Path(path)
    header = _header(path)
    tptbox_poi = _load_with_tptbox(path)
    if header["format"] == "POI_GLOBAL":
        entries = _global_entries(tptbox_poi)
    elif tptbox_poi.rotation is not None and tptbox_poi.origin is not None and tptbox_poi.zoom is not None:
        entries = _global_entries(tptbox_poi.to_global(itk_coords=True))
    else:
        entries = _entries_on_image_grid(tptbox_poi, geometry, path)
    return checked_pois(entries, geometry, path, describe)


def write_tptbox_poi(path: PathLike, pois: PoiSet, geometry: Optional[ImageGeometry] = None, *,
                     form: str = "local", coordinate_system: str = "itk") -> None:
    """Write unified points (world mm, LPS) as a TPTBox POI file that ``TPTBox.POI.load`` reads.

    ``form="local"`` writes voxel indices of ``geometry`` (the case's image) with
    its full grid in the header, so TPTBox can map them back to world itself;
    ``form="global"`` writes world mm in ``coordinate_system`` ``"itk"`` (LPS)
    or ``"nib"`` (RAS). Structures become TPTBox regions, POI ids ``Location``s.
    """
    from TPTBox import POI, POI_Global

    path = Path(path)
    if len(pois) == 0:
        raise PoiNnunetError(f"{path}: no points to write (TPTBox does not save an empty POI file)")
    if pois.dim != 3:
        raise PoiNnunetError(f"{path}: TPTBox POI files hold 3D points; these have {pois.dim} coordinates")
    world = pois.positions()
    keys = [(p.structure, p.poi) for p in pois]
    if form == "local":
        if geometry is None:
            raise ValueError("form='local' needs the geometry of the image the points belong to")
        index = geometry.world_to_index(world)
        tptbox_poi = POI(
            centroids={key: tuple(float(c) for c in row) for key, row in zip(keys, index)},
            orientation=axis_codes(geometry),
            zoom=tuple(float(s) for s in geometry.spacing),
            shape=tuple(int(s) for s in geometry.size),
            rotation=LPS_TO_RAS @ geometry.direction,
            origin=tuple(float(c) for c in LPS_TO_RAS @ geometry.origin),
        )
    elif form == "global":
        if coordinate_system not in COORDINATE_SYSTEMS:
            raise ValueError(f"coordinate_system must be one of {sorted(COORDINATE_SYSTEMS)}, got {coordinate_system!r}")
        itk = COORDINATE_SYSTEMS[coordinate_system]
        coords = world if itk else world @ LPS_TO_RAS
        points = {}
        for (structure, poi), row in zip(keys, coords):
            points.setdefault(structure, {})[poi] = tuple(float(c) for c in row)
        tptbox_poi = POI_Global(points, itk_coords=itk)
    else:
        raise ValueError(f"form must be 'local' or 'global', got {form!r}")
    atomic_write(path, lambda tmp: tptbox_poi.save(tmp, verbose=False), suffix_hint=".json")


# ---------------------------------------------------------------------------- reading
def _header(path: Path) -> dict:
    """Check what TPTBox would only assert on, so the user gets a sentence naming the file."""
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _fail(path, "POI file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(path, f"cannot read file ({exc})") from None
    except json.JSONDecodeError as exc:
        raise _fail(path, f"not valid JSON ({exc})") from None
    if not (isinstance(data, list) and len(data) == 2 and isinstance(data[0], dict) and isinstance(data[1], dict)):
        raise _fail(path, "a TPTBox POI file is a list of a header object and an object of points")
    header = data[0]
    if header.get("format") not in FORMATS:
        raise _fail(path, f"'format' is {header.get('format')!r}; this reads TPTBox's {' and '.join(FORMATS)} "
                          "formats (VerSe-style centroid lists: use 'poi_convert verse')")
    if header["format"] == "POI_GLOBAL" and header.get("coordinate_system", "nib") not in COORDINATE_SYSTEMS:
        raise _fail(path, f"'coordinate_system' is {header.get('coordinate_system')!r}; TPTBox knows "
                          f"{sorted(COORDINATE_SYSTEMS)}")
    return header


def _load_with_tptbox(path: Path) -> Any:
    from TPTBox.core.poi_fun.save_load import load_poi

    try:
        return load_poi(path)
    except Exception as exc:  # TPTBox signals bad content with asserts, KeyError, ValueError...
        raise _fail(path, f"TPTBox cannot read it ({type(exc).__name__}: {exc})") from None


def _global_entries(tptbox_poi: Any) -> List[Entry]:
    lps = tptbox_poi.to_global(itk_coords=True)
    return [(int(region), int(sub), np.asarray(xyz, dtype=np.float64)) for region, sub, xyz in lps.items()]


def _entries_on_image_grid(tptbox_poi: Any, geometry: ImageGeometry, path: Path) -> List[Entry]:
    """A local POI file without rotation/origin: voxels of the case's image along the file's axis codes."""
    if tuple(tptbox_poi.orientation) == ("U", "U", "U"):
        raise _fail(path, "local POI file has neither 'direction' nor 'rotation'/'origin': its voxels cannot be placed")
    codes = parse_axis_codes(list(tptbox_poi.orientation), path)
    if tptbox_poi.zoom is not None:
        expected = permuted(geometry.spacing, codes, geometry)
        if not np.allclose(tptbox_poi.zoom, expected, rtol=1e-3, atol=1e-4):
            raise _fail(path, f"'zoom' {list(tptbox_poi.zoom)} differs from the image's spacing {list(expected)} "
                              f"along {list(codes)}, and the file has no 'rotation'/'origin' to place its voxels")
    if tptbox_poi.shape is not None:
        expected_shape = permuted(geometry.size, codes, geometry)
        if tuple(int(round(s)) for s in tptbox_poi.shape) != tuple(expected_shape):
            raise _fail(path, f"'shape' {list(tptbox_poi.shape)} differs from the image's size {list(expected_shape)} "
                              f"along {list(codes)}")
    items = list(tptbox_poi.items())
    if not items:
        return []
    coords = np.array([xyz for _, _, xyz in items], dtype=np.float64)
    world = geometry.index_to_world(oriented_voxels_to_index(coords, codes, geometry))
    return [(int(region), int(sub), row) for (region, sub, _), row in zip(items, np.atleast_2d(world))]


def _fail(source: PathLike, message: str) -> InvalidInputError:
    return InvalidInputError([Problem(str(source), message)], headline=f"cannot read TPTBox POI file {source}")
