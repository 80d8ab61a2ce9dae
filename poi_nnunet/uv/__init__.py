"""Dense correspondence (DenseSeg, seed 001): per-structure templates and uv(w) target maps."""
from .targets import uv_target_map
from .template import UvTemplate, UvTemplates

__all__ = ["UvTemplate", "UvTemplates", "uv_target_map"]
