"""The coarse_refine trainer's loader: crops centred on a structure's label centroid, and which layer that is.

:class:`PoiDataLoader` centres a structure-mode crop on the mean of the
structure's annotated POIs. The coarse_refine model must find the centre
structure of a crop *at inference* too, where no POI is known, so here the
centre is the centroid of the structure's label, the same definition the
predictor uses on the predicted (or provided) label map. In training it is
estimated from nnU-Net's ``class_locations`` (the preprocessor's random sample
of each label's voxels, up to 10,000, so the estimate is a fraction of a voxel
off), plus the parent's random shift of up to an eighth of the patch. A
structure with POIs but no label voxels in the case (or no labels at all) falls
back to the parent's POI mean.

The batch gains ``centre_layer`` ``(B,)``: the slot layer of the centre
structure (0 in whole-image mode, -1 where a sample had no annotated structure
and nnU-Net's own crop was taken).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import load_pickle

from poi_nnunet.channels import STRUCTURE_MODE
from poi_nnunet.data_loader import CaseSlots, PoiDataLoader

CENTRE_LAYER = "centre_layer"


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
    """:class:`PoiDataLoader` with label-centroid crop centres and a ``centre_layer`` batch entry."""

    def __init__(self, data, *args, **kwargs):
        super().__init__(data, *args, **kwargs)
        self._key_of = {id(v): k for k, v in self.slots.items()}
        self._centroids: Dict[str, Dict[int, np.ndarray]] = {}
        if self.structure_centred:
            for key in data.identifiers:
                self._centroids[key] = label_centroids(data.source_folder, key, self.layout.layers)
        self._centre_layers: List[int] = []

    def structure_centred_bbox(self, shape: Sequence[int], case: CaseSlots) -> Optional[Tuple[List[int], List[int]]]:
        usable = case.usable.reshape(self.layout.num_layers, self.layout.num_channels)
        layers = np.flatnonzero(usable.any(axis=1))
        if len(layers) == 0:
            self._centre_layers.append(-1)
            return None
        layer = int(np.random.choice(layers))
        self._centre_layers.append(layer)
        centroid = self._centroids.get(self._key_of.get(id(case)), {}).get(int(self.layout.layers[layer]))
        if centroid is None:
            pts = case.positions.reshape(self.layout.num_layers, self.layout.num_channels, 3)[layer][usable[layer]]
            centroid = pts.mean(axis=0)
        centre = centroid[3 - len(shape):]
        patch = np.asarray(self.patch_size)
        shift = np.random.uniform(-1, 1, size=len(shape)) * patch / 8
        lbs = [int(round(c + s - p / 2)) for c, s, p in zip(centre, shift, patch)]
        return lbs, [lb + int(p) for lb, p in zip(lbs, patch)]

    def generate_train_batch(self) -> dict:
        self._centre_layers = []
        batch = super().generate_train_batch()
        n = len(batch["keys"])
        if self.layout.mode != STRUCTURE_MODE:
            layers = [0] * n
        elif self.structure_centred and len(self._centre_layers) == n:
            layers = self._centre_layers
        else:
            layers = [-1] * n
        batch[CENTRE_LAYER] = torch.tensor(layers, dtype=torch.long)
        return batch
