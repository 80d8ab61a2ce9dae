"""The coarse_refine trainer's loader: structure crops centred on the structure's label centroid.

:class:`PoiDataLoader` centres a structure-mode crop on the mean of the
structure's annotated POIs. The coarse_refine model must find the centre
structure of a crop *at inference* too, where no POI is known, so here the
centre is the centroid of the structure's label, the same definition the
predictor uses on the predicted (or provided) label map. In training it is
estimated from nnU-Net's ``class_locations`` (the preprocessor's random sample
of each label's voxels, up to 10,000, so the estimate is a fraction of a voxel
off), plus the parent's random shift. A structure with POIs but no label
voxels in the case (or no labels at all) falls back to the parent's POI mean.
The crop around the centre is :meth:`poi_nnunet.geometry.CropBox.centred_on`
in both, so for the same centre training and inference cut the same box.
"""
from __future__ import annotations

import os
from typing import Dict, Sequence

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_pickle

from poi_nnunet.data_loader import CaseSlots, PoiDataLoader
from poi_nnunet.plan import STRUCTURE_MODE


def label_centroids(folder: str, case: str, labels: Sequence[int]) -> Dict[int, np.ndarray]:
    """Centroid (preprocessed voxels, 3 axes) of each label in nnU-Net's sampled ``class_locations``."""
    properties = load_pickle(os.path.join(folder, case + ".pkl"))
    locations = properties.get("class_locations") or {}
    out = {}
    for label in labels:
        where = locations.get(label)
        if where is None:
            where = locations.get(int(label))
        if where is not None and len(where):
            out[int(label)] = np.asarray(where, dtype=np.float64)[:, 1:].mean(axis=0)
    return out


class CentredPoiDataLoader(PoiDataLoader):
    """:class:`PoiDataLoader` whose structure crops are centred on label centroids."""

    def __init__(self, data, *args, **kwargs):
        super().__init__(data, *args, **kwargs)
        self._centroids: Dict[str, Dict[int, np.ndarray]] = {}
        if self.structure_centred and self.layout.mode == STRUCTURE_MODE:  # a field of view has no label to centre on
            for key in data.identifiers:
                self._centroids[key] = label_centroids(data.source_folder, key, self.layout.layers)

    def crop_centre(self, key: str, case: CaseSlots, layer: int) -> np.ndarray:
        centroid = self._centroids.get(key, {}).get(int(self.layout.layers[layer]))
        return centroid if centroid is not None else super().crop_centre(key, case, layer)
