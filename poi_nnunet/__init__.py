"""poi-nnunet: anatomical points of interest learned with segmentation, on nnU-Net v2."""
__version__ = "0.1.0"
