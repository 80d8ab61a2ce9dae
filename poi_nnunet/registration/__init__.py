"""Registration-based augmentation (seed 000): case A's image, labels and points carried into case B's shape.

``register`` runs SimpleITK's affine and BSpline stages, ``points`` carries
points through the resulting transform, ``pairs`` chooses fold-respecting
pairs and writes the split, ``cleaning`` applies the planner's surface rule,
``sample`` makes one augmented sample and ``dataset`` writes the new raw
dataset (``poi_augment``).
"""
