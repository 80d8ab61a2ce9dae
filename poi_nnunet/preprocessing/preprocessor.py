"""nnU-Net's DefaultPreprocessor, plus each case's POIs mapped into its preprocessed voxel space.

Images and labels go through nnU-Net untouched; the POIs are mapped with the
exact crop box, transpose and shapes nnU-Net recorded for that case.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple, Union

from batchgenerators.utilities.file_and_folder_operations import load_pickle
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from ..geometry import ImageGeometry, PreprocessedSpace
from ..pois import PoiSet, read_poi_file
from .poi_files import build_preprocessed_pois, preprocessed_pois_file, write_preprocessed_pois


class PoiPreprocessor(DefaultPreprocessor):
    """Writes ``<data folder>_pois/<case>_pois.json`` for every case nnU-Net preprocesses.

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
        write_preprocessed_pois(preprocessed_pois_file(os.path.dirname(output_filename_truncated), case), mapped)
