"""Prediction on long scans split into fields of view (seed 000's lower limb): a coarse pass places each
field of view, its own model predicts its POIs, and all are merged into one output per case.

Per case:

1. **Coarse pass.** The ``3d_coarse`` model (the plans' ``coarse_configuration``: the whole scan in one
   patch at the coarse spacing, trained by :data:`~poi_nnunet.plan.COARSE_PASS_TRAINER`) predicts every POI
   and the segmentation. The segmentation written is
   this pass's; its points are not written, they only place the fields of view.
2. **Fields of view.** Each field of view is centred on the middle of the box of its POIs' coarse estimates
   that were found (confidence at or above the default threshold, 0.1, whatever ``--min_confidence``
   says: a guess must not place a field of view in a scan that lacks it), mapped through world mm into the
   ``3d_fullres`` preprocessed grid; its model (``<trainer>__poiPlans_<fov>__3d_fullres``) predicts its POIs from one
   full-resolution crop there (:meth:`CoarseRefinePredictor.predict_field_of_view`), as training centred
   its crops on the field of view's POIs.
3. **Missing fields of view.** Where the coarse pass finds none of a field of view's POIs (a scan cut off
   above the knee), its points are not written: each is listed as ``field_of_view_not_found`` and the case
   gets one warning line, and the other fields of view are predicted as usual.

Why the coarse pass places the fields of view, and not the segmentation or the image extent: a new scan
has no segmentation before a model makes one, and the image extent cannot tell a scan cut off above the
knee from a complete leg, nor where along it the knee lies.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from ..errors import PathLike
from ..geometry import ImageGeometry, PreprocessedSpace
from ..plan import FieldOfView
from .decoding import FIELD_OF_VIEW_NOT_FOUND, DecodedPoints, DroppedPoint
from .drop_report import DropSummary
from .inputs import InputCase
from .predictor import CasePrediction, PoiPredictor
from .run import finish_summary, unfinished_cases
from .writing import write_case_outputs


@dataclass
class LongScanModels:
    """The coarse pass's predictor and each field of view's (``predict_field_of_view``) with its field of view."""

    coarse: PoiPredictor
    fields: List[Tuple[FieldOfView, PoiPredictor]]

    @property
    def min_confidence(self) -> float:
        """The threshold points are written at (the fields of view's; the coarse pass keeps the default)."""
        return self.fields[0][1].min_confidence if self.fields else self.coarse.min_confidence


def field_of_view_centre(coarse: DecodedPoints, coarse_space: PreprocessedSpace, fov: FieldOfView,
                         fine_space: PreprocessedSpace) -> Optional[np.ndarray]:
    """Where the field of view's crop goes (``fine_space`` voxels, 3 axes): the middle of the box of the coarse
    pass's points of its channels, mapped through world mm into ``fine_space`` (the training crops' centre, on
    the annotated points; the planner sized the field of view around that box); None where the coarse pass
    found none of them."""
    keys = set(fov.channels)
    mine = np.array([(int(s), int(p)) in keys for s, p in zip(coarse.structures, coarse.pois)], dtype=bool)
    if not mine.any():
        return None
    fine = fine_space.world_to_preprocessed(coarse_space.preprocessed_to_world(coarse.positions[mine]))
    return (fine.min(axis=0) + fine.max(axis=0)) / 2


def merged_points(models: LongScanModels, coarse: DecodedPoints, coarse_space: PreprocessedSpace,
                  fine_data: np.ndarray, fine_space: PreprocessedSpace) -> Tuple[DecodedPoints, List[str]]:
    """Every field of view's points (``fine_space`` voxels) in one :class:`DecodedPoints`, and the names of the
    fields of view the coarse pass did not find (their channels dropped as ``field_of_view_not_found``)."""
    parts, missing = [], []
    for fov, predictor in models.fields:
        centre = field_of_view_centre(coarse, coarse_space, fov, fine_space)
        if centre is None:
            missing.append(fov.name)
            parts.append(DecodedPoints(*DecodedPoints.empty().arrays(),
                                       dropped=[DroppedPoint(s, p, FIELD_OF_VIEW_NOT_FOUND) for s, p in fov.channels]))
            continue
        parts.append(predictor.predict_field_of_view(fine_data, fine_space, centre))
    return DecodedPoints.concatenate(parts), missing


def predict_long_scans(models: LongScanModels, cases: Sequence[InputCase], out_dir: PathLike,
                       overwrite: bool = False, progress: bool = True) -> List[str]:
    """Preprocess, predict and write every case as :func:`.run.predict_input_cases` does, through the coarse pass
    and the fields of view (see the module docstring); return the cases predicted."""
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    coarse = models.coarse
    fine = models.fields[0][1]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ending = coarse.dataset_json["file_ending"]
    todo = unfinished_cases(cases, out_dir, ending, coarse.has_segmentation, overwrite=overwrite)
    preprocessor = DefaultPreprocessor(verbose=False)
    summary = DropSummary(models.min_confidence)
    done = []
    for case in tqdm(todo, desc="poi_predict (fields of view)", unit="case", disable=not progress):
        raw = ImageGeometry.from_file(case.files[0])
        spaces, arrays = [], []
        for predictor in (coarse, fine):
            data, _, properties = preprocessor.run_case(case.files, None, predictor.plans_manager,
                                                        predictor.configuration_manager, predictor.dataset_json)
            spaces.append((PreprocessedSpace.from_nnunet_properties(
                properties, predictor.plans_manager.transpose_forward, data.shape[1:], raw=raw), properties))
            arrays.append(data)
        (coarse_space, coarse_properties), (fine_space, _) = spaces
        first: CasePrediction = coarse.predict_case(arrays[0], coarse_space)
        points, missing = merged_points(models, first.points, coarse_space, arrays[1], fine_space)
        if missing:
            tqdm.write(f"{case.case}: warning: the coarse pass found no POI of field(s) of view {', '.join(missing)} "
                       "(cut off by the scan?); their points are not written")
        segmentation = reader_writer = None
        if coarse.has_segmentation:
            segmentation = convert_predicted_logits_to_segmentation_with_correct_shape(
                first.segmentation_logits, coarse.plans_manager, coarse.configuration_manager, coarse.label_manager,
                coarse_properties)
            reader_writer = coarse.plans_manager.image_reader_writer_class()
        write_case_outputs(out_dir, case.case, points.to_world(fine_space), coarse.dataset_json, segmentation,
                           coarse_properties, reader_writer)
        line = points.report(fine_space)
        if line:
            tqdm.write(f"{case.case}: {line}")
        summary.add(case.case, points, fine_space)
        done.append(case.case)
    finish_summary(summary, out_dir)
    return done
