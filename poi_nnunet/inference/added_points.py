"""Landmarks added to a trained ``uv`` model without retraining (``poi_predict -tr uv --add-points FILE``).

``FILE`` is a unified-format points file of one *training* case, named ``<case>.json`` after it, holding
points with POI ids the model was not trained on, each with the structure it belongs to. Each point is
carried into template coordinates exactly as the case's uv target map was made (:mod:`poi_nnunet.uv.targets`:
the similarity that fits the case's POIs onto the template, plus their residual displacement interpolated
linearly), evaluated at the point itself rather than read from the map's voxel centres, so a point on
a structure's outline keeps its sub-voxel position. The predictor then looks for that template
coordinate in every case, as for a trained POI.

The case's preprocessed POIs (``<data folder>_pois/<case>_pois.json``) give its space and its trained
POIs, so the preprocessed dataset must be at hand (``$nnUNet_preprocessed``). A point that lies outside
its structure, or more than ``HULL_MARGIN_VOXELS`` voxels (the voxel's largest side) outside the hull of
the structure's trained POIs (where the map has no value), is an error that names it. Within that margin
the residual displacement is taken where the point's path to the POIs' centre enters the hull
(:func:`poi_nnunet.uv.targets.structure_uv`): a point added on a convex outline between two contour POIs
lies just outside their chord (on the wrist phantom every held-out fourth contour point lay within 0.55
voxel of the remaining POIs' hull, 79% of them outside it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from ..errors import PathLike, PoiNnunetError
from ..pois import read_poi_file
from ..preprocessing import load_preprocessed_pois
from ..uv.targets import structure_uv
from ..uv.template import UvTemplates

HULL_MARGIN_VOXELS = 1.0  # how far outside the trained POIs' hull an added point may lie
AddedPoints = Dict[int, Tuple[List[int], np.ndarray]]  # structure -> (POI ids, (P, D) template uv)


def added_template_points(points_file: PathLike, templates: UvTemplates, data_folder: PathLike,
                          spacing_mm: np.ndarray, segmentation: np.ndarray) -> AddedPoints:
    """Template uv of every point of ``points_file`` (see the module docstring).

    ``data_folder``: nnU-Net's preprocessed data folder of the model's configuration; ``spacing_mm``
    ``(D,)``: the configuration's spacing; ``segmentation``: the case's preprocessed label map (3 axes).
    """
    path = Path(points_file)
    case = path.name[: -len(".json")] if path.name.endswith(".json") else path.stem
    try:
        known = load_preprocessed_pois(data_folder, case)
    except (FileNotFoundError, PoiNnunetError):
        raise PoiNnunetError(f"--add-points {path}: no preprocessed training case {case!r} in {data_folder}; the "
                             "file must be named after the training case its points were placed on") from None
    added = read_poi_file(path)
    dim = templates.dim
    spacing = np.asarray(spacing_mm, dtype=np.float64)[-dim:]
    out: AddedPoints = {}
    for point in added:
        structure, poi = int(point.structure), int(point.poi)
        where = f"--add-points {path}: point {poi} of structure {structure}"
        template = templates.for_structure(structure)
        if template is None:
            raise PoiNnunetError(f"{where}: the model has no uv template for structure {structure} "
                                 f"(it has {list(templates.structures)})")
        if poi in template.pois:
            raise PoiNnunetError(f"{where}: POI id {poi} is a trained POI of that structure; use a new id")
        voxel = known.space.world_to_preprocessed(np.asarray(point.position, dtype=np.float64)[None])[0]
        if not _touches_structure(segmentation, voxel, structure):
            raise PoiNnunetError(f"{where} lies outside the structure in case {case}")
        trained = [(p, pos) for s, p, pos, ok in zip(known.structures, known.pois, known.positions, known.valid)
                   if ok and int(s) == structure and int(p) in template.pois]
        case_mm = np.array([pos[-dim:] for _, pos in trained]).reshape(-1, dim) * spacing
        target = template.points_mm[template.index([p for p, _ in trained])]
        uv = structure_uv(voxel[None, -dim:] * spacing, case_mm, target, template,
                          hull_margin_mm=HULL_MARGIN_VOXELS * float(spacing.max()))[0]
        if not np.isfinite(uv).all():
            raise PoiNnunetError(f"{where} lies more than {HULL_MARGIN_VOXELS:g} voxel outside the hull of the "
                                 f"structure's trained POIs in case {case}, where its template coordinate is "
                                 "undefined")
        pois, uvs = out.setdefault(structure, ([], np.zeros((0, dim))))
        out[structure] = (pois + [poi], np.concatenate([uvs, uv[None]]))
    if not out:
        raise PoiNnunetError(f"--add-points {path}: the file holds no points")
    return out


def _touches_structure(segmentation: np.ndarray, voxel: np.ndarray, structure: int) -> bool:
    """Whether one of the voxels around a continuous position (its linear-interpolation corners) is ``structure``."""
    shape = np.asarray(segmentation.shape)
    lo = np.floor(voxel).astype(int)
    for corner in range(2 ** len(shape)):
        idx = lo + np.array([(corner >> d) & 1 for d in range(len(shape))])
        if np.all((idx >= 0) & (idx < shape)) and segmentation[tuple(idx)] == structure:
            return True
    return False


def add_points_to_predictor(predictor, points_file: PathLike) -> int:
    """Give a :class:`~.uv_predictor.UvPredictor` the points of ``points_file`` to extract too; returns how
    many. Reads the training case from the model's preprocessed dataset in ``$nnUNet_preprocessed``."""
    if not hasattr(predictor, "add_template_points"):
        raise PoiNnunetError("--add-points needs a model of the uv trainer (-tr uv): only dense correspondence "
                             "can find points it was not trained on")
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    if nnUNet_preprocessed is None:
        raise PoiNnunetError("--add-points reads the training case from the preprocessed dataset: set nnUNet_preprocessed")
    folder = Path(nnUNet_preprocessed) / predictor.plans_manager.dataset_name / \
        predictor.configuration_manager.data_identifier
    path = Path(points_file)
    case = path.name[: -len(".json")] if path.name.endswith(".json") else path.stem
    if not folder.is_dir():
        raise PoiNnunetError(f"--add-points: no preprocessed data at {folder}; run poi_plan_and_preprocess")
    try:
        _, segmentation, _, _ = infer_dataset_class(str(folder))(str(folder), [case]).load_case(case)
    except (FileNotFoundError, KeyError, RuntimeError):
        raise PoiNnunetError(f"--add-points {path}: no preprocessed training case {case!r} in {folder}") from None
    spacing = np.asarray(predictor.configuration_manager.spacing, dtype=np.float64)
    added = added_template_points(path, predictor.templates, folder, spacing, np.asarray(segmentation)[0])
    for structure, (pois, uv) in added.items():
        predictor.add_template_points(structure, pois, uv)
    return sum(len(p) for p, _ in added.values())
