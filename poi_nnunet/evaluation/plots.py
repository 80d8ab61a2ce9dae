"""The two evaluation plots, where :mod:`.run` finds them: error per POI (:mod:`.error_per_poi_plot`) and
the error distribution (:mod:`.error_distribution_plot`), both drawn in :mod:`.plot_style`."""
from __future__ import annotations

from .error_distribution_plot import plot_error_distribution
from .error_per_poi_plot import plot_error_per_poi

__all__ = ["plot_error_distribution", "plot_error_per_poi"]
