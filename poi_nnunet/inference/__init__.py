"""Prediction with trained POI models: nnU-Net's sliding window, fold ensembling, heatmap decoding, outputs.

* :mod:`.model`: find ``$nnUNet_results/<Dataset>/<Trainer>__<plans>__<config>`` and load its folds.
* :mod:`.predictor`: :class:`PoiPredictor`, nnU-Net's predictor for segmentation + heatmap outputs
  (full-width accumulation, mirror-aware test-time augmentation).
* :mod:`.decoding`: heatmaps -> points per crop mode, in preprocessed space; :mod:`.peak_assignment`:
  channels assigned jointly to distinct peaks, confidence lowered by ambiguity.
* :mod:`.confidence`: what a point's confidence means, one scale for every trainer.
* :mod:`.missing_structures`: structure mode, a structure the segmentation missed found from its peaks.
* :mod:`.drop_report`: what a run did not write, and why (summary line, ``dropped_points.json``).
* :mod:`.inputs`: listing and checking nnU-Net-named input files.
* :mod:`.writing`: atomic ``<case>.json``, ``<case>.mrk.json`` and segmentation files.
* :mod:`.run`: whole cases, from raw files or from nnU-Net's preprocessed folder.
"""
from .decoding import MIN_CONFIDENCE, DecodedPoints, DroppedPoint, decode_points, decode_structures, decode_whole_image
from .model import DEFAULT_CHECKPOINT, DEFAULT_PLANS, ModelFolder, find_model_folder, predictor_for
from .predictor import CasePrediction, PoiPredictor
from .run import predict_input_cases, predict_preprocessed_cases

__all__ = [
    "CasePrediction",
    "DEFAULT_CHECKPOINT",
    "DEFAULT_PLANS",
    "DecodedPoints",
    "DroppedPoint",
    "MIN_CONFIDENCE",
    "ModelFolder",
    "PoiPredictor",
    "decode_points",
    "decode_structures",
    "decode_whole_image",
    "find_model_folder",
    "predict_input_cases",
    "predict_preprocessed_cases",
    "predictor_for",
]
