"""nnU-Net's dataset fingerprint, extended by the POI fingerprint (:mod:`planners.poi_fingerprint`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
from nnunetv2.paths import nnUNet_preprocessed

from poi_nnunet.raw_dataset import RawDataset

from .poi_fingerprint import FINGERPRINT_FILE, build_fingerprint, load_fingerprint, save_fingerprint


class PoiFingerprintExtractor(DatasetFingerprintExtractor):
    """Runs nnU-Net's extractor unchanged, then measures the POIs; both files land in nnUNet_preprocessed.

    ``label_files`` replaces nnU-Net's label paths per case: a landmark-only dataset has no labelsTr,
    so the caller hands in whole-image foreground maps (nnU-Net's intensity statistics need some
    foreground; for such a dataset the whole image is the region of interest).
    """

    def __init__(self, dataset_name_or_id: Union[str, int], num_processes: int = 8, verbose: bool = False,
                 source_stamp: str = "", label_files: Optional[Mapping[str, str]] = None):
        super().__init__(dataset_name_or_id, num_processes, verbose)
        self.source_stamp = source_stamp
        self.poi_fingerprint: Optional[Dict[str, Any]] = None
        if label_files is not None:
            for case in self.dataset:
                self.dataset[case]["label"] = label_files[case]

    @property
    def poi_fingerprint_file(self) -> Path:
        return Path(join(nnUNet_preprocessed, self.dataset_name, FINGERPRINT_FILE))

    def run(self, overwrite_existing: bool = False) -> dict:
        fingerprint = super().run(overwrite_existing=overwrite_existing)
        existing = None if overwrite_existing else load_fingerprint(self.poi_fingerprint_file)
        if existing is not None and existing.get("source_stamp") == self.source_stamp:
            self.poi_fingerprint = existing
        else:
            ds = RawDataset.open(self.input_folder)
            self.poi_fingerprint = build_fingerprint(ds, self.source_stamp, self.num_processes,
                                                     progress=self.show_progress_bar)
            save_fingerprint(self.poi_fingerprint_file, self.poi_fingerprint)
        return fingerprint
