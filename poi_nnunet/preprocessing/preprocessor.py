"""nnU-Net's DefaultPreprocessor, plus each case's POIs mapped into its preprocessed voxel space.

Images and labels go through nnU-Net untouched; the POIs are mapped with the
exact crop box, transpose and shapes nnU-Net recorded for that case. Where the
configuration's plan has uv templates, the case's uv(w) target map is computed
from the saved label map and the mapped valid POIs (:mod:`poi_nnunet.uv`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple, Union

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_pickle
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from ..geometry import ImageGeometry, PreprocessedSpace
from ..plan import PoiPlan
from ..pois import PoiSet, read_poi_file
from ..uv import UvTemplates, uv_target_map
from .poi_files import PreprocessedPois, build_preprocessed_pois, preprocessed_pois_file, write_preprocessed_pois
from .uv_files import preprocessed_uv_file, write_uv_map


class PoiPreprocessor(DefaultPreprocessor):
    """Writes ``<data folder>_pois/<case>_pois.json`` for every case nnU-Net preprocesses, and
    ``<data folder>_uv/<case>_uv.npy`` where the configuration's plan has uv templates.

    ``poi_folder`` is the raw ``poisTr``; ``flagged`` maps a case to the ``(structure, poi)`` keys
    that cleaning excluded from training targets.
    """

    def __init__(self, verbose: bool = True, poi_folder: Optional[str] = None,
                 flagged: Optional[Dict[str, Set[Tuple[int, int]]]] = None):
        super().__init__(verbose=verbose)
        self.poi_folder = poi_folder
        self.flagged = flagged or {}

    def run_case(self, image_files: List[str], seg_file: Union[str, None], plans_manager: PlansManager,
                 configuration_manager: ConfigurationManager, dataset_json: Union[dict, str]):
        """nnU-Net's run_case; also records the shape after resampling, which POIs need to map."""
        data, seg, properties = super().run_case(image_files, seg_file, plans_manager, configuration_manager,
                                                 dataset_json)
        properties["shape_after_resampling"] = [int(s) for s in data.shape[1:]]
        return data, seg, properties

    def run_case_save(self, output_filename_truncated: str, image_files: List[str], seg_file: str,
                      plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                      dataset_json: Union[dict, str]):
        super().run_case_save(output_filename_truncated, image_files, seg_file, plans_manager,
                              configuration_manager, dataset_json)
        case = os.path.basename(output_filename_truncated)
        properties = load_pickle(output_filename_truncated + ".pkl")
        space = PreprocessedSpace.from_nnunet_properties(
            properties, plans_manager.transpose_forward, properties["shape_after_resampling"],
            raw=ImageGeometry.from_file(image_files[0]))
        poi_file = Path(self.poi_folder) / f"{case}.json" if self.poi_folder else None
        pois = read_poi_file(poi_file) if poi_file is not None and poi_file.is_file() else PoiSet()
        mapped = build_preprocessed_pois(case, space, pois, self.flagged.get(case, set()))
        data_folder = os.path.dirname(output_filename_truncated)
        write_preprocessed_pois(preprocessed_pois_file(data_folder, case), mapped)
        templates = PoiPlan.from_configuration(configuration_manager).uv_templates
        if templates is not None:
            _, seg, _, _ = nnUNetDatasetBlosc2(data_folder, [case]).load_case(case)  # the labels nnU-Net saved
            write_uv_map(preprocessed_uv_file(data_folder, case), preprocessed_uv_map(np.asarray(seg[0]), mapped,
                                                                                      templates))


def preprocessed_uv_map(seg: np.ndarray, pois: PreprocessedPois, templates: UvTemplates) -> np.ndarray:
    """``(D, *seg.shape)`` uv map of a preprocessed case: ``seg`` is nnU-Net's 3-axis label array (2D data:
    ``(1, Y, X)``); the map covers its last ``D`` axes (the configuration's), the leading axis of 1 kept.
    Only ``pois``' valid points count; mm are preprocessed voxels times the case's actual spacing."""
    dim = templates.dim
    lead = seg.shape[:3 - dim]
    if any(n != 1 for n in lead):
        raise ValueError(f"{dim}-axis uv templates for a preprocessed array of shape {seg.shape}")
    valid = pois.training_points()
    points = {key: pos[3 - dim:] for key, pos in zip(valid.keys(), valid.positions)}
    uv = uv_target_map(seg.reshape(seg.shape[3 - dim:]), points, pois.space.spacing[3 - dim:], templates)
    return uv.reshape((dim,) + seg.shape)
