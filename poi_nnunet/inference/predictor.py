"""``PoiPredictor``: nnU-Net's sliding-window predictor for networks with segmentation + heatmap outputs.

Three things differ from :class:`nnUNetPredictor`, each a small override:

* **Output width.** nnU-Net allocates its sliding-window accumulator with
  ``label_manager.num_segmentation_heads`` channels; our networks add one
  heatmap per POI channel. While a window prediction runs, the predictor's
  label manager is seen through a proxy that reports the full width, so
  nnU-Net's own loop (Gaussian tile weighting, padding, fold averaging)
  accumulates every channel.
* **Test-time mirroring.** nnU-Net averages the network's outputs over
  flipped inputs. Flipping the patient's left-right axis turns a left POI (or
  structure) into its right partner, so before averaging, the un-flipped
  output of such a flip has its heatmap channels permuted by the dataset's
  ``poi_mirror_pairs`` (:meth:`ChannelLayout.channel_permutation`) and its
  segmentation channels by ``structure_mirror_pairs``. Which axis is
  left-right depends on the case's direction matrix and transpose, so it is
  set per case (:meth:`PoiPredictor.predict_case`).
* **Fold ensembling** is nnU-Net's: one network, a list of fold parameters,
  outputs (segmentation logits and heatmaps alike) averaged over folds.

Output channels ``[0, n_seg)`` are segmentation logits, ``[n_seg, n_seg + C)``
heatmaps, as the ``heatmap`` trainer trains them. Sigma, amplitude and peak
support come from the plans' ``poi`` block (:class:`~poi_nnunet.plan.PoiPlan`).
"""
from __future__ import annotations

import contextlib
import io
import itertools
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from ..channels import ChannelLayout
from ..errors import PoiNnunetError
from ..geometry import PreprocessedSpace
from ..plan import STRUCTURE_MODE, PoiPlan
from .decoding import MIN_CONFIDENCE, DecodedPoints, decode_points
from .missing_structures import recover_missing_structures
from .peak_assignment import SAME_PEAK_SIGMAS


class _FullWidth:
    """A label manager that reports every network output as a 'segmentation head' (see module docstring)."""

    def __init__(self, label_manager: Any, num_outputs: int):
        self._label_manager = label_manager
        self.num_segmentation_heads = num_outputs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._label_manager, name)


@dataclass
class CasePrediction:
    """One case's network output in preprocessed space, and the points decoded from it."""

    segmentation_logits: torch.Tensor  # (n_seg, z, y, x), CPU, as nnU-Net returns them (float16)
    heatmaps: torch.Tensor  # (C, z, y, x), CPU, float16: the point channels (heatmaps; uv: the D coordinates)
    points: Optional[DecodedPoints]  # preprocessed coordinates; None for a segmentation-only model
    segmentation: Optional[np.ndarray] = None  # (z, y, x) labels in preprocessed space the points were decoded in


def checked_segmentation(segmentation: np.ndarray, data: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    """A provided label map, checked to lie on the preprocessed data's grid."""
    segmentation = np.asarray(segmentation)
    if segmentation.shape != tuple(data.shape[1:]):
        raise PoiNnunetError(f"provided segmentation {segmentation.shape} does not match the "
                             f"preprocessed data {tuple(data.shape[1:])}")
    return segmentation


class PoiPredictor(nnUNetPredictor):
    """nnU-Net's predictor for segmentation + heatmap networks; build it with :func:`load_poi_model`
    or :meth:`from_trainer`, never with ``initialize_from_trained_model_folder`` (name search)."""

    writes_points = True  # False: a segmentation-only model (no point files)

    def __init__(self, *args: Any, min_confidence: float = MIN_CONFIDENCE, **kwargs: Any):
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints a notice on every non-CUDA device
            super().__init__(*args, **kwargs)
        self.min_confidence = float(min_confidence)
        self.layout: Optional[ChannelLayout] = None
        self.poi_plan: Optional[PoiPlan] = None
        self.num_segmentation_outputs = 0
        self.mirror_permutation: Optional[np.ndarray] = None  # output channel permutation, None = identity
        self.left_right_axis: Optional[int] = None  # network input spatial axis, set per case

    # ------------------------------------------------------------------ construction
    def manual_initialization(self, network: nn.Module, plans_manager: PlansManager,
                              configuration_manager: ConfigurationManager, parameters: Optional[List[dict]],
                              dataset_json: dict, trainer_name: str,
                              inference_allowed_mirroring_axes: Optional[Tuple[int, ...]]) -> None:
        super().manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json,
                                      trainer_name, inference_allowed_mirroring_axes)
        self.poi_plan = PoiPlan.from_configuration(configuration_manager)
        self.layout = ChannelLayout.from_plan(self.poi_plan, dataset_json)
        self.num_segmentation_outputs = int(self.label_manager.num_segmentation_heads)
        try:
            self.mirror_permutation = self._output_mirror_permutation()
        except PoiNnunetError:
            if self.use_mirroring:
                raise
            self.mirror_permutation = None

    @classmethod
    def from_trainer(cls, trainer: Any, **kwargs: Any) -> "PoiPredictor":
        """A predictor on a trainer's in-memory network (end-of-training validation).

        Deep supervision is switched off on the trainer's network, as nnU-Net's own validation does.
        ``kwargs`` go to the constructor (``tile_step_size``, ``use_mirroring``, ...).
        """
        trainer.set_deep_supervision_enabled(False)
        network = trainer.network.module if getattr(trainer, "is_ddp", False) else trainer.network
        kwargs.setdefault("device", trainer.device)
        kwargs.setdefault("allow_tqdm", False)
        predictor = cls(**kwargs)
        module = getattr(network, "_orig_mod", network)
        predictor.manual_initialization(network, trainer.plans_manager, trainer.configuration_manager,
                                        [module.state_dict()], trainer.dataset_json, type(trainer).__name__,
                                        trainer.inference_allowed_mirroring_axes)
        return predictor

    # ------------------------------------------------------------------ sizes
    @property
    def num_outputs(self) -> int:
        return self.num_segmentation_outputs + self.layout.num_channels

    @property
    def has_segmentation(self) -> bool:
        return len(self.label_manager.foreground_labels) > 0

    # ------------------------------------------------------------------ mirroring
    def _output_mirror_permutation(self) -> Optional[np.ndarray]:
        pairs = self.dataset_json.get("poi_mirror_pairs") or []
        structures = self.dataset_json.get("structure_mirror_pairs") or []
        if not pairs and not structures:
            return None
        try:
            heat = self.layout.channel_permutation(pairs, structures)
        except ValueError as exc:
            raise PoiNnunetError(f"test-time mirroring: {exc}; predict with --disable_tta") from None
        seg = self._segmentation_permutation(structures)
        perm = np.concatenate([seg, self.num_segmentation_outputs + np.asarray(heat, dtype=int)])
        return None if np.array_equal(perm, np.arange(len(perm))) else perm

    def _segmentation_permutation(self, structure_pairs: Sequence[Sequence[int]]) -> np.ndarray:
        """Segmentation output channel permutation that swaps paired labels (regions: paired label sets)."""
        partner = {int(a): int(b) for a, b in structure_pairs} | {int(b): int(a) for a, b in structure_pairs}
        lm = self.label_manager
        if lm.has_regions:
            regions = [tuple(sorted(np.atleast_1d(r).tolist())) for r in lm.foreground_regions]
            index = {r: i for i, r in enumerate(regions)}
            perm = []
            for r in regions:
                mirrored = tuple(sorted(partner.get(v, v) for v in r))
                if mirrored not in index:
                    raise PoiNnunetError(f"test-time mirroring: region {r} has no mirrored region {mirrored}; "
                                         "predict with --disable_tta")
                perm.append(index[mirrored])
            return np.array(perm, dtype=int)
        labels = [int(v) for v in lm.all_labels]
        if labels != list(range(len(labels))):
            raise PoiNnunetError(f"labels {labels} are not consecutive from 0, as nnU-Net requires")
        return np.array([partner.get(v, v) for v in labels], dtype=int)

    def set_case_space(self, space: Optional[PreprocessedSpace]) -> None:
        """Tell mirroring which network input axis is the case's left-right axis."""
        if space is None:
            self.left_right_axis = None
            return
        self.left_right_axis = space.left_right_patch_axis(len(self.configuration_manager.patch_size))

    @torch.inference_mode()
    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        """nnU-Net's flip-and-average, with left/right partners exchanged after un-flipping the LR axis."""
        if self.mirror_permutation is None:
            return super()._internal_maybe_mirror_and_predict(x)
        mirror_axes = self.allowed_mirroring_axes if self.use_mirroring else None
        prediction = self.network(x)
        if not mirror_axes:
            return prediction
        if self.left_right_axis is None:
            raise RuntimeError("PoiPredictor: set_case_space(space) must be called before predicting a case")
        assert max(mirror_axes) <= x.ndim - 3, "mirror_axes does not match the dimension of the input!"
        axes = [m + 2 for m in mirror_axes]
        combinations = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
        swapped = None  # the un-flipped outputs of left-right flips, summed, then permuted once
        for flip in combinations:
            out = torch.flip(self.network(torch.flip(x, flip)), flip)
            if self.left_right_axis + 2 in flip:
                swapped = out if swapped is None else swapped + out
            else:
                prediction += out
        if swapped is not None:
            prediction += swapped.index_select(1, torch.as_tensor(self.mirror_permutation, device=swapped.device))
        return prediction / (len(combinations) + 1)

    # ------------------------------------------------------------------ prediction
    @torch.inference_mode()
    def predict_sliding_window_return_logits(self, input_image: torch.Tensor) -> Union[np.ndarray, torch.Tensor]:
        with self._full_width():
            return super().predict_sliding_window_return_logits(input_image)

    @contextlib.contextmanager
    def _full_width(self) -> Iterator[None]:
        label_manager = self.label_manager
        self.label_manager = _FullWidth(label_manager, self.num_outputs)
        try:
            yield
        finally:
            self.label_manager = label_manager

    def predict_case(self, data: Union[np.ndarray, torch.Tensor], space: PreprocessedSpace,
                     segmentation: Optional[np.ndarray] = None) -> CasePrediction:
        """Sliding-window prediction (all folds) of one preprocessed case, then decoding.

        ``data`` is nnU-Net's preprocessed array ``(channels, z, y, x)``; ``space`` the case's
        preprocessed space (for the left-right axis; points stay in preprocessed coordinates).
        ``segmentation``: instance labels in the same space (``poi_predict --labels``); the peaks are
        then looked for inside these structures instead of the predicted ones. Without it, the predicted
        segmentation is used where the dataset has labels (in whole-image mode a structure's channels
        are decoded inside its box, see :mod:`.decoding`), and structure mode requires it; a structure it
        misses is looked for around its heatmap peaks (:mod:`.missing_structures`).
        """
        data = self.checked_input(data)
        logits = self.case_logits(data, space)
        if logits.shape[0] != self.num_outputs:
            raise PoiNnunetError(f"the network gives {logits.shape[0]} outputs, expected {self.num_outputs} "
                                 f"({self.num_segmentation_outputs} segmentation + {self.layout.num_channels} heatmaps)")
        seg_logits, heatmaps = logits[: self.num_segmentation_outputs], logits[self.num_segmentation_outputs:]
        provided = segmentation is not None
        if provided:
            segmentation = checked_segmentation(segmentation, data)
        elif self.layout.mode == STRUCTURE_MODE or self.has_segmentation:
            # structure mode decodes inside the structures; whole-image mode bounds each structure's channels
            segmentation = np.asarray(self.label_manager.convert_logits_to_segmentation(seg_logits.float()))
        plan = self.poi_plan
        options = dict(sigma_voxels=plan.heatmap_sigma_voxels, min_confidence=self.min_confidence,
                       support_sigmas=plan.peak_support_sigmas, same_peak_sigmas=plan.same_peak_sigmas(SAME_PEAK_SIGMAS))
        points = decode_points(heatmaps, self.layout, plan.heatmap_amplitude, segmentation=segmentation,
                               shape_prior=plan.shape_prior, **options)
        if self.finds_missing_structures(provided):
            points = recover_missing_structures(points, heatmaps, seg_logits, segmentation, self.layout,
                                                amplitude=plan.heatmap_amplitude, **options)
        return CasePrediction(seg_logits, heatmaps, points, segmentation)

    def checked_input(self, data: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
        """A preprocessed case ``(channels, z, y, x)`` as a tensor, checked against the network's inputs."""
        data = torch.from_numpy(np.ascontiguousarray(data)) if isinstance(data, np.ndarray) else data
        expected = self.network_input_channels()
        if expected is not None and data.shape[0] != expected:
            raise PoiNnunetError(f"preprocessed data has {data.shape[0]} channels, the network takes {expected}")
        return data

    def case_logits(self, data: torch.Tensor, space: PreprocessedSpace) -> torch.Tensor:
        """nnU-Net's sliding-window output of one case (all folds; test-time mirroring with this case's
        left-right axis), on the CPU in nnU-Net's float16."""
        self.set_case_space(space)
        try:
            return self.predict_logits_from_preprocessed_data(data).cpu()
        finally:
            self.set_case_space(None)

    def finds_missing_structures(self, segmentation_provided: bool) -> bool:
        """Whether structures the predicted segmentation misses are looked for in the heatmaps
        (:mod:`.missing_structures`): structure mode, the model's own label segmentation."""
        return (self.layout.mode == STRUCTURE_MODE and not segmentation_provided and self.has_segmentation
                and not self.label_manager.has_regions)

    def network_input_channels(self) -> Optional[int]:
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

        return int(determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json))
