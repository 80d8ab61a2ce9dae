"""``heatmap``: nnU-Net's segmentation network with one more output channel per POI channel.

The plans' network is built unchanged; beside its last 1x1 segmentation
convolution sits a small heatmap head on the same decoder features
(:mod:`poi_nnunet.heads`: a hidden layer at least as wide as the POI count,
since a plain widened 1x1 convolution cannot separate more POIs than the
decoder has features), so the last ``C`` channels of the full-resolution
output are heatmaps. Targets are Gaussians rendered on the device from the points the
loader moved through augmentation, ``amplitude * exp(-d^2 / 2 sigma^2)`` with
sigma from the plans' ``poi`` block.

Loss: nnU-Net's Dice + CE (with deep supervision) on the segmentation channels
where the dataset has labels, plus ``heatmap_weight`` times the masked squared
error on the full-resolution heatmaps (the heatmap-regression baseline of seed
001). Squared error against a scaled Gaussian is chosen because its optimum is
the Gaussian itself, whose peak the decoder fits to sub-voxel precision. It is
summed per channel and divided by one peak's energy, not by the voxel count
(see :class:`MaskedHeatmapLoss`): as a plain MSE the peaks drowned in the zero
background beside a segmentation loss of order one, and the heads learnt to
predict zero everywhere.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from torch import nn

from poi_nnunet.augmentation import get_point_aware_training_transforms
from poi_nnunet.channels import STRUCTURE_MODE, ChannelLayout
from poi_nnunet.data_loader import PoiDataLoader, case_slots
from poi_nnunet.heads import add_heatmap_head
from poi_nnunet.losses import MaskedHeatmapLoss
from poi_nnunet.preprocessing import PreprocessedPois, load_preprocessed_pois

from .poi_loss import PointTargets, SegmentationAndHeatmapLoss, render_point_targets


def poi_block_of(configuration_manager) -> dict:
    try:
        return configuration_manager.configuration["poi"]
    except KeyError:
        raise RuntimeError("these plans have no 'poi' block: plan with poi_plan_and_preprocess") from None


class PoiHeatmapTrainer(nnUNetTrainer):
    """Segmentation + one heatmap per POI channel of the plans."""

    heatmap_amplitude: float = 10.0
    # 1 per POI against Dice+CE: in the demo's CPU budget (1500 steps, 160 X-ray POIs) points went from none
    # found to 5.4 mm mean TRE, while the segmentation's Dice fell from 0.92 to 0.70; 0.1 kept more Dice
    # (EMA pseudo-Dice 0.77 after a 750-step run, against 0.63 at step 750 of the 1500) but left 7% of the
    # validation points unfound and the rest at 17.7 mm.
    heatmap_weight: float = 1.0
    p_elastic_deform: float = 0.0

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.poi_block = poi_block_of(self.configuration_manager)
        self.poi_layout = ChannelLayout.from_poi_block(self.poi_block, dataset_json)
        self.num_segmentation_outputs = self.label_manager.num_segmentation_heads
        self.has_segmentation = len(self.label_manager.foreground_labels) > 0
        self.heatmap_sigma_voxels = [float(s) for s in self.poi_block["heatmap_sigma_voxels"]]

    # ------------------------------------------------------------------ network
    @staticmethod
    def poi_output_channels(configuration_manager) -> int:
        return len(poi_block_of(configuration_manager)["poi_channels"])

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        """The plans' network with a heatmap head beside its last segmentation layer (rebuildable from plans alone).

        The full-resolution output is ``num_output_channels`` segmentation logits followed by one heatmap
        per POI channel; the deep-supervision outputs stay segmentation-only.
        """
        network = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                           num_output_channels, enable_deep_supervision)
        return add_heatmap_head(network, PoiHeatmapTrainer.poi_output_channels(configuration_manager))

    # ------------------------------------------------------------------ loss
    def _build_loss(self) -> SegmentationAndHeatmapLoss:
        segmentation = super()._build_loss() if self.has_segmentation else None
        return SegmentationAndHeatmapLoss(segmentation, self.heatmap_loss(), self.num_segmentation_outputs,
                                          self.heatmap_weight)

    def heatmap_loss(self) -> MaskedHeatmapLoss:
        """Squared error per channel in units of one peak's energy, so the weight is dataset-independent."""
        return MaskedHeatmapLoss(amplitude=self.heatmap_amplitude, sigma_voxels=self.heatmap_sigma_voxels)

    def point_targets(self, batch: dict, shape) -> PointTargets:
        """Heatmap targets and channel masks for this batch, rendered on the training device."""
        return render_point_targets(batch["keypoints"].to(self.device), batch["channel_valid"].to(self.device),
                                    self.poi_layout, tuple(shape), self.heatmap_sigma_voxels,
                                    self.heatmap_amplitude)

    def train_step(self, batch: dict) -> dict:
        self.loss.targets = self.point_targets(batch, batch["data"].shape[2:])
        out = super().train_step(batch)
        out.update(self.loss.last_terms)
        return out

    def validation_step(self, batch: dict) -> dict:
        """nnU-Net's validation step (loss and pseudo-Dice) seeing only the segmentation channels."""
        self.loss.targets = self.point_targets(batch, batch["data"].shape[2:])
        view = SegmentationView(self.network, self.num_segmentation_outputs)
        joint_loss = self.loss
        with _swapped(self, network=view, loss=lambda _, target: joint_loss(view.last_output, target)):
            out = super().validation_step(batch)
        out.update(joint_loss.last_terms)
        return out

    def on_validation_epoch_end(self, val_outputs: List[dict]) -> None:
        super().on_validation_epoch_end(val_outputs)
        poi = np.mean([o["poi_loss"] for o in val_outputs])
        self.print_to_log_file(f"val heatmap loss {poi:.5f}")

    # ------------------------------------------------------------------ end of training
    def perform_actual_validation(self, save_probabilities: bool = False) -> Optional[dict]:
        """Predict the fold's validation cases, write them as poi_predict would, and evaluate them.

        Points are compared with the raw dataset's ``poisTr`` (the annotations as given, cleaned
        points included: cleaning decides what is learnt, not what counts as truth).
        """
        from poi_nnunet.evaluation import evaluate_folders
        from poi_nnunet.evaluation.report import format_table
        from poi_nnunet.inference import PoiPredictor, predict_preprocessed_cases
        from poi_nnunet.raw_dataset import raw_root

        self.set_deep_supervision_enabled(False)
        self.network.eval()
        _, val_keys = self.do_split()
        out_dir = Path(self.output_folder) / "validation"
        predictor = PoiPredictor.from_trainer(self)
        predict_preprocessed_cases(predictor, self.preprocessed_dataset_folder, val_keys, out_dir)
        self.set_deep_supervision_enabled(True)
        reference = raw_root() / self.plans_manager.dataset_name / "poisTr"
        if not reference.is_dir():
            self.print_to_log_file(f"no reference points at {reference}; validation predictions are in {out_dir}")
            return None
        summary = evaluate_folders(reference, out_dir, out_dir / "evaluation", cases=sorted(val_keys))
        self.print_to_log_file("validation:\n" + format_table(summary))
        return summary

    # ------------------------------------------------------------------ data
    def load_points(self, keys) -> Dict[str, PreprocessedPois]:
        return {k: load_preprocessed_pois(self.preprocessed_dataset_folder, k) for k in keys}

    def mirror_settings(self, points: Dict[str, PreprocessedPois], mirror_axes) -> Tuple[tuple, dict]:
        """Mirror axes to use, and how slots and labels swap when the left-right axis is flipped.

        nnU-Net does not reorient images, so the left-right patch axis is read from each case's
        direction. Where cases disagree, no single swap is right for all of them: mirroring is then
        limited to axes that are left-right in no case, which needs no swap at all.
        """
        pairs = self.dataset_json.get("poi_mirror_pairs") or []
        structures = self.dataset_json.get("structure_mirror_pairs") or []
        none = {"swap_axes": (), "slot_permutation": None, "label_swaps": ()}
        if not pairs and not structures or not mirror_axes:
            return mirror_axes, none
        offset = 3 - len(self.configuration_manager.patch_size)
        lr_axes = {p.space.left_right_axis() - offset for p in points.values()}
        if len(lr_axes) > 1:
            kept = tuple(a for a in mirror_axes if a not in lr_axes)
            self.print_to_log_file(f"left-right axis differs between cases ({sorted(lr_axes)}): mirroring only "
                                   f"along {kept}")
            return kept, none
        axis = lr_axes.pop()
        return mirror_axes, {"swap_axes": (axis,) if axis >= 0 else (),
                             "slot_permutation": self.poi_layout.mirror_permutation(pairs, structures),
                             "label_swaps": tuple(tuple(p) for p in structures)}

    def get_dataloaders(self):
        """nnU-Net's loaders and augmentation, with points riding along (see :mod:`poi_nnunet.data_loader`)."""
        if self.dataset_class is None:
            from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        patch_size = self.configuration_manager.patch_size
        ds_scales = self._get_deep_supervision_scales()
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        tr_keys, val_keys = list(dataset_tr.identifiers), list(dataset_val.identifiers)
        points = self.load_points(tr_keys + val_keys)
        slots = {k: case_slots(p, self.poi_layout) for k, p in points.items()}
        mirror_axes, mirroring = self.mirror_settings(points, mirror_axes)
        labels = dict(foreground_labels=self.label_manager.foreground_labels,
                      regions=self.label_manager.foreground_regions if self.label_manager.has_regions else None,
                      ignore_label=self.label_manager.ignore_label)
        tr_transforms = get_point_aware_training_transforms(
            patch_size, rotation, ds_scales, mirror_axes, dummy_2d,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=self.is_cascaded,
            **labels, **mirroring, p_elastic_deform=self.p_elastic_deform)
        val_transforms = self.get_validation_transforms(ds_scales, is_cascaded=self.is_cascaded, **labels)
        structure_centred = self.poi_layout.mode == STRUCTURE_MODE
        common = dict(label_manager=self.label_manager, layout=self.poi_layout, slots=slots,
                      structure_centred=structure_centred,
                      oversample_foreground_percent=self.oversample_foreground_percent,
                      probabilistic_oversampling=self.probabilistic_oversampling)
        dl_tr = PoiDataLoader(dataset_tr, self.batch_size, initial_patch_size, patch_size,
                              transforms=tr_transforms, **common)
        dl_val = PoiDataLoader(dataset_val, self.batch_size, patch_size, patch_size,
                               transforms=val_transforms, **common)
        processes = get_allowed_n_proc_DA()
        if processes == 0:
            mt_tr, mt_val = SingleThreadedAugmenter(dl_tr, None), SingleThreadedAugmenter(dl_val, None)
        else:
            pin = self.device.type == "cuda"
            mt_tr = NonDetMultiThreadedAugmenter(dl_tr, None, processes, max(6, processes // 2), None, pin, 0.002)
            mt_val = NonDetMultiThreadedAugmenter(dl_val, None, max(1, processes // 2), max(3, processes // 4),
                                                  None, pin, 0.002)
        _ = next(mt_tr), next(mt_val)
        return mt_tr, mt_val


class SegmentationView(nn.Module):
    """Presents only the segmentation channels of a network's outputs; keeps the full output."""

    def __init__(self, network: nn.Module, num_segmentation_outputs: int):
        super().__init__()
        self.network = network
        self.n = num_segmentation_outputs
        self.last_output = None

    def forward(self, x: torch.Tensor):
        out = self.network(x)
        self.last_output = out
        if isinstance(out, (list, tuple)):
            return [o[:, : self.n] for o in out]
        return out[:, : self.n]


@contextlib.contextmanager
def _swapped(obj, **attributes):
    """Temporarily replace attributes (nnU-Net's validation step reads ``self.network`` and ``self.loss``)."""
    old = {k: obj.__dict__[k] for k in attributes}
    obj.__dict__.update(attributes)
    try:
        yield
    finally:
        obj.__dict__.update(old)
