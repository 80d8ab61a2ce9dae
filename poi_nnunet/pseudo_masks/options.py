"""What ``poi_pseudo_masks`` is asked to do (:class:`PseudoMaskOptions`), and what every stage shares: its
progress lines (:func:`say`) and the fold it trains and predicts with (:func:`parse_fold`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from ..errors import PoiNnunetError
from .fusion import FusionMethod
from .smoothing import DEFAULT_CLOSING_RADIUS_MM, DEFAULT_OPENING_RADIUS_MM

#: Default fusion: the probability mean (measured against ``vote``: see the README's ``poi_pseudo_masks`` section).
DEFAULT_FUSION: FusionMethod = "mean"


@dataclass
class PseudoMaskOptions:
    """What the command line sets (defaults are the command's)."""

    fold: str = "all"
    device: str = "cuda"
    epochs: Optional[int] = None
    iterations_per_epoch: Optional[int] = None
    fusion: FusionMethod = DEFAULT_FUSION
    closing_radius_mm: float = DEFAULT_CLOSING_RADIUS_MM
    opening_radius_mm: float = DEFAULT_OPENING_RADIUS_MM
    output_id: Optional[int] = None
    num_processes: int = 8
    num_processes_fingerprint: int = 8
    use_mirroring: bool = True
    progress: bool = True


def say(stage: str, text: str) -> None:
    """One progress line, ``[stage] text``, flushed at once (stages run for hours, often under nohup)."""
    print(f"[{stage}] {text}", flush=True)


def parse_fold(text: str) -> Union[int, str]:
    """``--fold``: an integer, or ``all`` (every case trains: pseudo masks are wanted for all of them)."""
    if str(text) == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise PoiNnunetError(f"fold must be an integer or 'all', got {text!r}") from None
