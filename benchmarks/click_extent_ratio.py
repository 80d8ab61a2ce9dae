"""How large the prior-extent radius must be, relative to the clicks' spread (``EXTENT_PER_CLICK_SPREAD``).

For point supervision's extent term to be right, every voxel of a structure must lie within the radius
``r`` of every click on it. The planner only sees the clicks, so it sets ``r`` to a multiple of their
spread (the largest box diagonal of one case's clicks over the cases). This script writes the synthetic
spine, simulates clicks as ``poi_convert clicks`` does, and reports per vertebra label
``required r / spread``, where ``required r`` is the largest distance from a vertebra voxel to one of its
clicks over the cases: the multiple must exceed the largest of these.

    python benchmarks/click_extent_ratio.py --work /tmp/extent --shapes 48,40,40 64,48,48 --clicks 5
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def ratios(dataset: Path, clicks: int, seed: int) -> Dict[int, float]:
    """Per label: (largest voxel-to-click distance) / (largest click box diagonal), both over the cases, mm."""
    from dataset_conversion.click_simulation import draw_clicks

    spread: Dict[int, float] = {}
    reach: Dict[int, float] = {}
    rng = np.random.default_rng(seed)
    for f in sorted((dataset / "labelsTr").glob("*.nii.gz")):
        image = sitk.ReadImage(str(f))
        labels = sitk.GetArrayFromImage(image)
        spacing = np.array(image.GetSpacing()[::-1])
        drawn = draw_clicks(labels, spacing, clicks, 0, rng)
        for label in (int(v) for v in np.unique(labels) if v):
            mm = np.array([c.array_index for c in drawn if c.label == label], float) * spacing
            if len(mm) == 0:
                continue
            voxels = np.argwhere(labels == label) * spacing
            farthest = np.linalg.norm(voxels[:, None] - mm[None], axis=-1).max()
            spread[label] = max(spread.get(label, 0.0), float(np.linalg.norm(mm.max(0) - mm.min(0))))
            reach[label] = max(reach.get(label, 0.0), float(farthest))
    return {k: reach[k] / spread[k] for k in spread if spread[k] > 0}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from dataset_conversion.synthetic_spine import write_spine_dataset

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--shapes", nargs="+", default=["48,40,40", "64,48,48"], help="phantom shapes z,y,x")
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--clicks", type=int, default=5, help="clicks per vertebra (poi_convert clicks' default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for text in args.shapes:
        shape: List[int] = [int(v) for v in text.split(",")]
        dataset = args.work / f"spine_{'x'.join(map(str, shape))}"
        if not (dataset / "dataset.json").is_file():
            write_spine_dataset(dataset, num_cases=args.cases, num_test=0, seed=args.seed, shape=tuple(shape),
                                overwrite=True)
        r = np.array(list(ratios(dataset, args.clicks, args.seed).values()))
        print(f"shape {shape}: {len(r)} labels, required r / click spread: min {r.min():.2f} median "
              f"{np.median(r):.2f} max {r.max():.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
