"""``poi_tune``: search a trainer's loss weights (and heatmap target values) with Optuna.

* :mod:`.space`: :class:`Tunable`, the ranges each trainer declares (no optuna import: trainers use it);
* :mod:`.plans`: trial and applied plans (a new plans identifier with the values in its ``poi`` block);
* :mod:`.objectives`: which objectives a study has (TRE, Dice) and how they are read from a fold's summary;
* :mod:`.study`: storage, study, resume after a killed worker;
* :mod:`.trial`: one trial: plans, short training, validation, objectives;
* :mod:`.progress`: one line per finished trial and a bar over trials;
* :mod:`.report`: the Pareto front as a table, CSV and PNG;
* :mod:`.apply`: ``--apply TRIAL``.
"""
from .space import Tunable

__all__ = ["Tunable"]
