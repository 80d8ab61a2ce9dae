"""nnU-Net preprocessing with POIs: the pipeline behind ``poi_plan_and_preprocess`` and its POI files."""
from .poi_files import PreprocessedPois, load_preprocessed_pois, preprocessed_pois_file

__all__ = ["PreprocessedPois", "load_preprocessed_pois", "preprocessed_pois_file"]
