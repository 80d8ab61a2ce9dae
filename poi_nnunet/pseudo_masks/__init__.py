"""Pseudo masks from point-supervised per-plane models (seed 002, section 3.1.3; issue 12, part 3).

Pure functions: :mod:`.fusion` fuses the probabilities or label maps of the three 2D models (one per
anatomical plane, already on the case's grid) into one label map, and :mod:`.smoothing` cleans that map
morphologically before it is used as the training target of the final model. :mod:`.planes` slices the
volumes for the per-plane models, :mod:`.pipeline` runs the stages (:mod:`.plane_models`,
:mod:`.plane_prediction`, :mod:`.fused_masks`, :mod:`.output_dataset`); ``poi_pseudo_masks`` is their command
line.
"""
from .fusion import (FUSION_METHODS, NNUNET_PROBABILITIES_KEY, FusionMethod, fuse, fuse_probabilities, fuse_votes,
                     label_dtype, load_nnunet_probabilities)
from .smoothing import (DEFAULT_CLOSING_RADIUS_MM, DEFAULT_OPENING_RADIUS_MM, ellipsoid_structuring_element,
                        smooth_label_map, structuring_element_half_widths)

__all__ = [
    "DEFAULT_CLOSING_RADIUS_MM", "DEFAULT_OPENING_RADIUS_MM", "FUSION_METHODS", "FusionMethod",
    "NNUNET_PROBABILITIES_KEY", "ellipsoid_structuring_element", "fuse", "fuse_probabilities", "fuse_votes",
    "label_dtype", "load_nnunet_probabilities", "smooth_label_map", "structuring_element_half_widths",
]
