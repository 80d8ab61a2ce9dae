"""nnUNetTrainer subclasses that add POI heads and losses."""
