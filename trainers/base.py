"""``PoiTrainer``: what every POI method shares, on top of nnU-Net's ``nnUNetTrainer``.

A method (``heatmap``, ``coarse_refine``, ...) is a small subclass that overrides only what differs:

* :meth:`PoiTrainer.add_poi_heads`: heads added to the plans' network (built from the plans alone,
  so ``poi_predict`` rebuilds it);
* :meth:`PoiTrainer.build_poi_loss`: its loss, called as ``loss(output, target, batch)`` with a
  :class:`~poi_nnunet.batch.PoiBatch` and returning a :class:`~poi_nnunet.batch.LossOutput`;
* :meth:`PoiTrainer.forward_network`: how a batch runs through the network (default: nnU-Net's
  ``network(data)``);
* :meth:`PoiTrainer.segmentation_output`: where the segmentation logits are in its output;
* class attributes: ``data_loader_class`` (the loader), ``predictor_class`` (the predictor that
  ``poi_predict`` and the end-of-training validation use), ``p_elastic_deform``, ``tunable`` (what
  ``poi_tune`` may search: the method's loss weights and planned values, :mod:`poi_nnunet.tuning.space`);
  :meth:`PoiTrainer.loader_arguments` for what its loader takes beyond the base's.

The base owns the typed plan (:class:`~poi_nnunet.plan.PoiPlan`), the channel layout, the
preprocessed points, mirror settings and pair swaps, the loaders and augmentation, one
``train_step`` and one ``validation_step`` (nnU-Net's, with the batch's points handed to the loss),
and the end-of-training validation (predict the fold's validation cases and evaluate them).

Distributed training (``poi_train -num_gpus N``, :mod:`poi_nnunet.distributed`) is nnU-Net's: each rank
gets its share of the plans' batch, gradients are averaged by ``DistributedDataParallel``. The base adds
CPU (gloo) ranks, which nnU-Net does not build, gathers the method's loss terms across ranks like nnU-Net
gathers its loss, and validates on rank 0 alone (one writer per output folder).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, ClassVar, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, nn
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel

from poi_nnunet.augmentation import get_point_aware_training_transforms
from poi_nnunet.batch import LossOutput, PoiBatch
from poi_nnunet.channels import ChannelLayout
from poi_nnunet.data_loader import OFF_SURFACE, PoiDataLoader, case_slots, centre_shift_voxels
from poi_nnunet.errors import PoiNnunetError
from poi_nnunet.inference import PoiPredictor, predict_preprocessed_cases
from poi_nnunet.plan import PoiPlan
from poi_nnunet.preprocessing import PreprocessedPois, load_preprocessed_pois
from poi_nnunet.tuning.space import Tunable
from trainers.progress import TrainingProgress

NNUNET_OUTPUT_KEYS = ("loss", "tp_hard", "fp_hard", "fn_hard")


class PoiTrainer(nnUNetTrainer):
    """nnU-Net's trainer with POIs riding along (see the module docstring for what a method overrides)."""

    data_loader_class: type = PoiDataLoader
    predictor_class: type = PoiPredictor
    p_elastic_deform: float = 0.0  # probability; the ranges come from the plan
    # What poi_tune searches, by name: loss weights (attributes of the trainer) and values of the poi block
    # (``in_plan``). A subclass extends its parent's dict; the base owns no loss, so nothing to tune here.
    tunable: ClassVar[Dict[str, Tunable]] = {}
    # The validation loss term (unweighted, so trials with other weights compare) that follows point accuracy:
    # what poi_tune prunes a TRE-only study on. None: such a study is not pruned.
    pruning_term: ClassVar[Optional[str]] = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp and device.type == "cpu":  # nnU-Net assumes one GPU per rank; gloo ranks stay on the CPU
            self.device, self.grad_scaler = device, None
        self.poi_plan = PoiPlan.from_configuration(self.configuration_manager)
        self.apply_loss_weights(self.poi_plan.loss_weights)
        self.poi_layout = ChannelLayout.from_plan(self.poi_plan, dataset_json)
        self.num_segmentation_outputs = self.label_manager.num_segmentation_heads
        self.has_segmentation = len(self.label_manager.foreground_labels) > 0
        self.progress: Optional[TrainingProgress] = None  # set when a run starts (trainers/progress.py)
        self._train_means: Dict[str, float] = {}
        self.val_term_means: Dict[str, float] = {}  # the last epoch's validation loss terms, by name
        # called with the trainer after every epoch (nnU-Net's bookkeeping done): poi_tune's pruning reads the
        # epoch's validation there and may stop the run by raising
        self.epoch_end_callbacks: List[Callable[["PoiTrainer"], None]] = []
        # the end-of-training validation's point threshold; None: the predictor's default, as poi_predict.
        # poi_tune sets 0 so every point is written and TRE covers them all
        self.validation_min_confidence: Optional[float] = None

    # ------------------------------------------------------------------ tunable loss weights
    @classmethod
    def search_space(cls) -> Dict[str, Tunable]:
        """What ``poi_tune`` searches for this class (default: its ``tunable`` declaration)."""
        return dict(cls.tunable)

    @classmethod
    def weight_names(cls) -> Tuple[str, ...]:
        """The loss weights the plans' ``poi.loss_weights`` may set: the searched ones that are attributes."""
        return tuple(name for name, t in cls.search_space().items() if not t.in_plan)

    def loss_weight(self, name: str) -> float:
        """The current value of loss weight ``name`` (one of :meth:`weight_names`)."""
        return float(getattr(self, name))

    @classmethod
    def default_loss_weight(cls, name: str) -> float:
        """The class's value of loss weight ``name``: what an instance has unless the plans set it."""
        return float(getattr(cls, name))

    def set_loss_weight(self, name: str, value: float) -> None:
        """Set loss weight ``name`` on this instance (the class default stays for other trainers)."""
        setattr(self, name, float(value))

    def apply_loss_weights(self, weights: Mapping[str, float]) -> None:
        """Set the plans' loss weights before the loss is built; a name this trainer does not declare is an
        error naming the plans file (a weight tuned for another method would otherwise be silently lost)."""
        known = self.weight_names()
        unknown = sorted(set(weights) - set(known))
        if unknown:
            plans_file = Path(self.preprocessed_dataset_folder_base or ".") / f"{self.plans_manager.plans_name}.json"
            raise PoiNnunetError(
                f"{plans_file}: configuration {self.configuration_name!r} has poi.loss_weights "
                f"{', '.join(map(repr, unknown))}, which {type(self).__name__} does not have (its weights: "
                f"{', '.join(known) or 'none'}); were these plans tuned for another trainer?")
        for name, value in weights.items():
            self.set_loss_weight(name, value)

    # ------------------------------------------------------------------ what a method overrides
    @classmethod
    def add_poi_heads(cls, network: nn.Module, plan: PoiPlan, configuration_manager, num_input_channels: int,
                      num_segmentation_outputs: int) -> nn.Module:
        """The method's heads on the plans' network (default: none)."""
        return network

    def build_poi_loss(self, segmentation_loss: Optional[nn.Module]) -> nn.Module:
        """The method's loss around nnU-Net's (None for a landmark-only dataset)."""
        raise NotImplementedError(f"{type(self).__name__} must define build_poi_loss")

    def loader_arguments(self) -> dict:
        """Keyword arguments the method's ``data_loader_class`` takes beyond :class:`PoiDataLoader`'s."""
        return {}

    def forward_network(self, data: torch.Tensor, batch: PoiBatch):
        """Run the network on a batch; what it returns is what the loss gets as ``output``."""
        return self.network(data)

    def segmentation_output(self, output):
        """nnU-Net's segmentation logits (a list under deep supervision) within the network's output."""
        if isinstance(output, (list, tuple)):
            return [o[:, : self.num_segmentation_outputs] for o in output]
        return output[:, : self.num_segmentation_outputs]

    # ------------------------------------------------------------------ network and loss
    def initialize(self) -> None:
        """nnU-Net's, and on CPU ranks the DDP wrapper nnU-Net cannot build there.

        nnU-Net wraps the network with ``device_ids=[rank]``, which DDP refuses for a CPU module: the
        network, optimiser and loaders are built as for one process, then this rank's share of the batch
        is set, the network wrapped without device ids, and the loss rebuilt with its Dice gathered
        across ranks (``ddp=True``), as nnU-Net's GPU ranks have it.
        """
        if not (self.is_ddp and self.device.type == "cpu") or self.was_initialized:
            super().initialize()
            return
        self.is_ddp = False
        try:
            super().initialize()
        finally:
            self.is_ddp = True
        self._set_batch_size_and_oversample()
        self.network = DistributedDataParallel(self.network)
        self.loss = self._build_loss()

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        """The plans' nnU-Net network plus the method's heads, rebuildable from the plans alone."""
        network = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                           num_output_channels, enable_deep_supervision)
        plan = PoiPlan.from_configuration(configuration_manager)
        return cls.add_poi_heads(network, plan, configuration_manager, num_input_channels, num_output_channels)

    def _build_loss(self) -> nn.Module:
        return self.build_poi_loss(super()._build_loss() if self.has_segmentation else None)

    # ------------------------------------------------------------------ steps
    def _on_device(self, batch: dict):
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        if isinstance(target, list):
            target = [t.to(self.device, non_blocking=True) for t in target]
        else:
            target = target.to(self.device, non_blocking=True)
        progress = self.current_epoch / max(self.num_epochs, 1)  # for losses whose targets follow a schedule
        return data, target, PoiBatch.from_loader(batch, self.device, progress)

    def _autocast(self):
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's step (AMP on CUDA, gradient clipping at 12), with the batch's points passed to the loss."""
        data, target, points = self._on_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            result: LossOutput = self.loss(self.forward_network(data, points), target, points)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(result.total).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            result.total.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        loss = result.total.detach().cpu().numpy()
        if self.progress is not None:
            self.progress.step(float(loss))
        # how many targets the cleaning rule masked after augmentation (logged per step, as the loss terms)
        return {"loss": loss, **result.terms, "off_surface_targets": float(batch.get(OFF_SURFACE, 0))}

    @torch.no_grad()
    def validation_step(self, batch: dict) -> dict:
        """The loss plus nnU-Net's online pseudo-Dice counts on the segmentation channels."""
        data, target, points = self._on_device(batch)
        with self._autocast():
            output = self.forward_network(data, points)
            result: LossOutput = self.loss(output, target, points)
        seg = self.segmentation_output(output)
        seg, target = (seg[0], target[0]) if isinstance(seg, list) else (seg, target)
        tp, fp, fn = self._pseudo_dice_counts(seg, target)
        return {"loss": result.total.detach().cpu().numpy(), "tp_hard": tp, "fp_hard": fp, "fn_hard": fn,
                **result.terms}

    def _pseudo_dice_counts(self, output: torch.Tensor, target: torch.Tensor) -> Tuple[np.ndarray, ...]:
        """True/false positives and false negatives per foreground class, as nnU-Net's validation step counts them."""
        axes = [0] + list(range(2, output.ndim))
        lm = self.label_manager
        if lm.has_regions:
            predicted = (torch.sigmoid(output) > 0.5).long()
        else:
            predicted = torch.zeros(output.shape, device=output.device, dtype=torch.float16)
            predicted.scatter_(1, output.argmax(1)[:, None], 1)
        mask = None
        if lm.has_ignore_label:
            if not lm.has_regions:
                mask = (target != lm.ignore_label).float()
                target = torch.where(target == lm.ignore_label, torch.zeros_like(target), target)
            else:
                mask = ~target[:, -1:] if target.dtype == torch.bool else 1 - target[:, -1:]
                target = target[:, :-1]
        tp, fp, fn, _ = get_tp_fp_fn_tn(predicted, target, axes=axes, mask=mask)
        counts = [x.detach().cpu().numpy() for x in (tp, fp, fn)]
        return tuple(counts if lm.has_regions else [c[1:] for c in counts])

    # ------------------------------------------------------------------ progress and loss terms
    def on_train_start(self) -> None:
        super().on_train_start()
        self.progress = TrainingProgress(self.num_epochs, self.num_iterations_per_epoch, self.current_epoch,
                                         show_bar=self.local_rank == 0)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        if self.progress is not None:
            self.progress.start_epoch(self.current_epoch)

    def on_train_epoch_end(self, train_outputs: List[dict]) -> None:
        if self.progress is not None:
            self.progress.close_bar()
        super().on_train_epoch_end(train_outputs)
        self._train_means = self._log_terms("train", train_outputs)

    def on_validation_epoch_end(self, val_outputs: List[dict]) -> None:
        super().on_validation_epoch_end(val_outputs)
        self.val_term_means = self._log_terms("val", val_outputs)

    def on_epoch_end(self) -> None:
        if self.progress is not None:
            self.print_to_log_file(self.progress.epoch_line(self.current_epoch, self._train_means))
        super().on_epoch_end()
        for callback in self.epoch_end_callbacks:
            callback(self)

    def _log_terms(self, split: str, outputs: List[dict]) -> Dict[str, float]:
        """Log the method's loss terms (beyond nnU-Net's ``loss``) averaged over the epoch (over every rank's
        steps under DDP); return the means of ``loss`` and the terms (the progress line's losses)."""
        names = [k for k in outputs[0] if k not in NNUNET_OUTPUT_KEYS] if outputs else []
        values = {k: [float(np.asarray(o[k], dtype=np.float64)) for o in outputs] for k in ["loss", *names]
                  if outputs and k in outputs[0]}
        values = self._gathered(values)
        means = {k: float(np.nanmean(values[k])) for k in names}
        if means:
            self.print_to_log_file(f"{split} " + ", ".join(f"{k} {v:.4f}" for k, v in means.items()))
        if "loss" in values:
            means = {"loss": float(np.nanmean(values["loss"])), **means}
        return means

    def _gathered(self, values: Dict[str, List[float]]) -> Dict[str, List[float]]:
        """Per-step values of every rank, concatenated by name (this rank's alone without DDP)."""
        if not self.is_ddp:
            return values
        every: List[Optional[Dict[str, List[float]]]] = [None] * dist.get_world_size()
        dist.all_gather_object(every, values)
        return {k: [v for rank in every for v in (rank or {}).get(k, [])] for k in values}

    # ------------------------------------------------------------------ end of training
    def perform_actual_validation(self, save_probabilities: bool = False) -> Optional[dict]:
        """Predict the fold's validation cases with the method's predictor, write them as poi_predict
        would, and evaluate them against :meth:`validation_reference` (the raw dataset's ``poisTr``,
        cleaned points included: cleaning decides what is learnt, not what counts as truth). Under DDP rank 0
        does it alone; the other ranks return None."""
        from poi_nnunet.evaluation import evaluate_folders
        from poi_nnunet.evaluation.report import format_table
        from poi_nnunet.raw_dataset import raw_root

        if self.local_rank != 0:  # rank 0 predicts every case: one writer per output folder, no barrier to time out
            return None
        self.set_deep_supervision_enabled(False)
        self.network.eval()
        _, val_keys = self.do_split()
        out_dir = Path(self.output_folder) / "validation"
        threshold = {} if self.validation_min_confidence is None else {"min_confidence": self.validation_min_confidence}
        predictor = self.predictor_class.from_trainer(self, **threshold)
        predict_preprocessed_cases(predictor, self.preprocessed_dataset_folder, val_keys, out_dir)
        self.set_deep_supervision_enabled(True)
        reference = self.validation_reference(raw_root() / self.plans_manager.dataset_name)
        if not reference.is_dir():
            self.print_to_log_file(f"no reference at {reference}; validation predictions are in {out_dir}")
            return None
        summary = evaluate_folders(reference, out_dir, out_dir / "evaluation", cases=sorted(val_keys))
        self.print_to_log_file("validation:\n" + format_table(summary))
        return summary

    def validation_reference(self, raw_dataset: Path) -> Path:
        """The folder the validation predictions are scored against: the raw dataset's ``poisTr``; for a field
        of view's model, copies of the validation cases' point files holding that field of view's points only
        (``validation/reference_<fov>``), so the other fields of view's points do not count as missed."""
        reference = raw_dataset / "poisTr"
        fov = self.poi_plan.field_of_view
        if fov is None or not reference.is_dir():
            return reference
        from poi_nnunet.pois import PoiSet, read_poi_file, write_poi_file

        folder = Path(self.output_folder) / "validation" / f"reference_{fov.name}"
        folder.mkdir(parents=True, exist_ok=True)
        keys = set(fov.channels)
        for case in self.do_split()[1]:
            source = reference / f"{case}.json"
            if source.is_file():
                write_poi_file(folder / source.name, PoiSet([p for p in read_poi_file(source) if p.key in keys]))
        return folder

    # ------------------------------------------------------------------ data
    def load_points(self, keys) -> Dict[str, PreprocessedPois]:
        return {k: load_preprocessed_pois(self.preprocessed_dataset_folder, k) for k in keys}

    def mirror_settings(self, points: Dict[str, PreprocessedPois], mirror_axes) -> Tuple[tuple, dict]:
        """Mirror axes to use, and how slots, layers and labels swap when the left-right axis is flipped.

        nnU-Net does not reorient images, so the left-right patch axis is read from each case's
        direction. Where cases disagree, no single swap is right for all of them: mirroring is then
        limited to axes that are left-right in no case, which needs no swap at all.
        """
        pairs = self.dataset_json.get("poi_mirror_pairs") or []
        structures = self.dataset_json.get("structure_mirror_pairs") or []
        none = {"swap_axes": (), "slot_permutation": None, "label_swaps": (), "layer_permutation": None}
        if not pairs and not structures or not mirror_axes:
            return mirror_axes, none
        n_axes = len(self.configuration_manager.patch_size)
        lr_axes = {p.space.left_right_patch_axis(n_axes) for p in points.values()}
        if len(lr_axes) > 1:
            kept = tuple(a for a in mirror_axes if a not in lr_axes)
            self.print_to_log_file(f"left-right axis differs between cases ({sorted(lr_axes)}): mirroring only "
                                   f"along {kept}")
            return kept, none
        axis = lr_axes.pop()
        return mirror_axes, {"swap_axes": (axis,) if axis >= 0 else (),
                             "slot_permutation": self.poi_layout.mirror_permutation(pairs, structures),
                             "label_swaps": tuple(tuple(p) for p in structures),
                             "layer_permutation": self.poi_layout.layer_permutation(structures)}

    def get_dataloaders(self):
        """nnU-Net's loaders and augmentation with points riding along (``data_loader_class``)."""
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
            **labels, **mirroring, p_elastic_deform=self.p_elastic_deform,
            elastic_deform_scale=self.poi_plan.elastic_scale,
            elastic_deform_magnitude=self.poi_plan.elastic_magnitude_voxels)
        val_transforms = self.get_validation_transforms(ds_scales, is_cascaded=self.is_cascaded, **labels)
        spacing = [float(s) for s in self.configuration_manager.spacing]
        common = dict(label_manager=self.label_manager, layout=self.poi_layout, slots=slots,
                      structure_centred=self.poi_plan.centred_crops, spacing=spacing,
                      centre_shift=centre_shift_voxels(self.poi_plan, spacing, patch_size),
                      surface_fences_mm=self.poi_plan.surface_fences_mm,
                      min_voxel_diagonals=self.poi_plan.min_voxel_diagonals,
                      oversample_foreground_percent=self.oversample_foreground_percent,
                      probabilistic_oversampling=self.probabilistic_oversampling, **self.loader_arguments())
        loader = self.data_loader_class
        dl_tr = loader(dataset_tr, self.batch_size, initial_patch_size, patch_size, transforms=tr_transforms, **common)
        dl_val = loader(dataset_val, self.batch_size, patch_size, patch_size, transforms=val_transforms, **common)
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
