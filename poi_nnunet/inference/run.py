"""Predicting cases end to end: raw files (``poi_predict``) or cases nnU-Net already preprocessed
(end-of-training validation), writing the same outputs for both.

Per case: nnU-Net's preprocessing (or its preprocessed files), sliding-window
prediction over all folds, heatmap decoding in preprocessed space, mapping to
world mm through the case's :class:`~poi_nnunet.geometry.PreprocessedSpace`,
and nnU-Net's export of the segmentation onto the input grid (skipped for a
landmark-only dataset, which has no foreground label). What was not written is reported per
case and once per run, and listed in ``dropped_points.json`` (:mod:`.drop_report`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from ..errors import PathLike, PoiNnunetError
from ..geometry import ImageGeometry, PreprocessedSpace
from .drop_report import DropSummary
from .inputs import InputCase
from .predictor import CasePrediction, PoiPredictor
from .writing import case_is_done, write_case_outputs, write_run_files


def export_case(predictor: PoiPredictor, prediction: CasePrediction, space: PreprocessedSpace, properties: dict,
                out_dir: Path, case: str) -> List[Path]:
    """Write ``<case>.nii.gz`` (nnU-Net's export), ``<case>.mrk.json`` and ``<case>.json`` (the last two
    not for a segmentation-only model, whose prediction has no points)."""
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    segmentation = None
    reader_writer = None
    if predictor.has_segmentation:
        segmentation = convert_predicted_logits_to_segmentation_with_correct_shape(
            prediction.segmentation_logits, predictor.plans_manager, predictor.configuration_manager,
            predictor.label_manager, properties)
        reader_writer = predictor.plans_manager.image_reader_writer_class()
    pois = prediction.points.to_world(space) if prediction.points is not None else None
    return write_case_outputs(out_dir, case, pois, predictor.dataset_json, segmentation, properties, reader_writer)


def report_dropped(case: str, prediction: CasePrediction, space: PreprocessedSpace,
                   summary: Optional[DropSummary] = None) -> None:
    """One line for a case where points were not written (and why), or decoded without their structure's
    bounds (see :meth:`DecodedPoints.report`); nothing where every channel gave a point. The case is
    also counted in ``summary``."""
    if prediction.points is None:
        return
    line = prediction.points.report(space)
    if line:
        tqdm.write(f"{case}: {line}")
    if summary is not None:
        summary.add(case, prediction.points, space)


def finish_summary(summary: DropSummary, out_dir: Path) -> None:
    """Write ``dropped_points.json`` (see :mod:`.drop_report`) and print the run's summary line."""
    if not summary.dropped:
        return
    listed = summary.write(out_dir)
    print(summary.line(out_dir if listed is not None else None))


def provided_label_files(cases: Sequence[InputCase], labels_dir: PathLike, ending: str) -> List[str]:
    """``labels_dir/<case><ending>`` of every case; a missing one is an error that names it."""
    files = [Path(labels_dir) / f"{c.case}{ending}" for c in cases]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise PoiNnunetError(f"--labels {labels_dir}: {len(missing)} case(s) have no label map, e.g. {missing[0]}")
    return [str(f) for f in files]


def unfinished_cases(cases: Sequence[InputCase], out_dir: Path, file_ending: str, with_segmentation: bool,
                     with_points: bool = True, overwrite: bool = False) -> List[InputCase]:
    """The cases whose outputs in ``out_dir`` are not all written (every case with ``overwrite``), so that a
    re-run after an interruption resumes; says how many it skips."""
    todo = [c for c in cases
            if overwrite or not case_is_done(out_dir, c.case, file_ending, with_segmentation, with_points)]
    if len(cases) > len(todo):
        print(f"{len(cases) - len(todo)} case(s) already predicted in {out_dir}; skipping them "
              "(pass --overwrite to redo)")
    return todo


def predict_input_cases(predictor: PoiPredictor, cases: Sequence[InputCase], out_dir: PathLike,
                        overwrite: bool = False, progress: bool = True,
                        labels_dir: Optional[PathLike] = None) -> List[str]:
    """Preprocess, predict and write every case (skipping finished ones unless ``overwrite``); return those predicted.

    ``labels_dir``: instance label maps (``<case><file_ending>``) on the images' grids that say where the
    structures are (preprocessed with the image, as nnU-Net preprocesses labels) instead of the model's
    own segmentation.
    """
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ending = predictor.dataset_json["file_ending"]
    todo = unfinished_cases(cases, out_dir, ending, predictor.has_segmentation, predictor.writes_points, overwrite)
    labels = provided_label_files(todo, labels_dir, ending) if labels_dir is not None else [None] * len(todo)
    preprocessor = DefaultPreprocessor(verbose=False)  # the plans' preprocessor, built directly
    summary = DropSummary(predictor.min_confidence)
    done = []
    for case, label_file in tqdm(list(zip(todo, labels)), desc="poi_predict", unit="case", disable=not progress):
        data, seg, properties = preprocessor.run_case(case.files, label_file, predictor.plans_manager,
                                                      predictor.configuration_manager, predictor.dataset_json)
        space = PreprocessedSpace.from_nnunet_properties(properties, predictor.plans_manager.transpose_forward,
                                                         data.shape[1:], raw=ImageGeometry.from_file(case.files[0]))
        # nnU-Net's preprocessor always returns a 'segmentation': without a label file it is its nonzero
        # mask (0 / -1), which must not be taken for the structures' labels
        provided = np.asarray(seg[0]) if label_file is not None else None
        prediction = predictor.predict_case(data, space, segmentation=provided)
        export_case(predictor, prediction, space, properties, out_dir, case.case)
        report_dropped(case.case, prediction, space, summary)
        done.append(case.case)
    finish_summary(summary, out_dir)
    return done


def preprocessed_case_space(preprocessed_folder: PathLike, case: str, properties: dict,
                            transpose_forward: Sequence[int], shape: Sequence[int]) -> PreprocessedSpace:
    """The case's space from its preprocessed POI file; from nnU-Net's properties where there is none.

    Both are built from the same crop box, transpose and shapes; the POI file has the raw image's
    geometry from its header, the properties the one nnU-Net's SimpleITK reader recorded.
    """
    from ..preprocessing import load_preprocessed_pois

    try:
        return load_preprocessed_pois(preprocessed_folder, case).space
    except PoiNnunetError:
        if "sitk_stuff" not in properties:
            raise
        return PreprocessedSpace.from_nnunet_properties(properties, transpose_forward, shape)


def predict_preprocessed_cases(predictor: PoiPredictor, preprocessed_folder: PathLike, case_ids: Iterable[str],
                               out_dir: PathLike, progress: bool = False) -> List[str]:
    """Predict cases nnU-Net preprocessed into ``preprocessed_folder`` (a configuration's data folder) and
    write the same outputs as :func:`predict_input_cases` into ``out_dir``, plus the model's
    ``dataset.json`` and ``plans.json`` (which ``poi_evaluate`` reads); return the case ids."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    folder = Path(preprocessed_folder)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    case_ids = list(case_ids)
    if not case_ids:
        return []
    try:
        dataset = infer_dataset_class(str(folder))(str(folder), case_ids)
    except Exception as exc:  # nnU-Net raises bare errors for a missing or foreign folder
        raise PoiNnunetError(f"{folder}: cannot open nnU-Net's preprocessed cases {case_ids[:3]} ({exc})") from None
    write_run_files(out_dir, predictor.dataset_json, predictor.plans_manager.plans)
    summary = DropSummary(predictor.min_confidence)
    done = []
    for case in tqdm(case_ids, desc="predicting", unit="case", disable=not progress):
        data, _, _, properties = dataset.load_case(case)
        data = np.asarray(data[:])
        space = preprocessed_case_space(folder, case, properties, predictor.plans_manager.transpose_forward,
                                        data.shape[1:])
        if tuple(space.shape_after_resampling) != tuple(data.shape[1:]):
            raise PoiNnunetError(f"{folder}: case {case}: preprocessed POI file is for shape "
                                 f"{space.shape_after_resampling}, the data is {tuple(data.shape[1:])}; "
                                 "preprocess again")
        prediction = predictor.predict_case(data, space)
        export_case(predictor, prediction, space, properties, out_dir, case)
        report_dropped(case, prediction, space, summary)
        done.append(case)
    finish_summary(summary, out_dir)
    return done
