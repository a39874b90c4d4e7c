"""The segmentation pipeline: DICOM series -> volume -> UNETR -> lesions in the series' own grid.

    from inference.pipeline import Segmenter
    result = Segmenter(config.model).segment(paths)

The model is loaded once, lazily, on the first series.  Device: CUDA when
present (``device: auto``), else CPU.  Precision (``precision: auto``): bf16
autocast on CUDA that supports it and on a CPU with AMX or AVX512-BF16 (UNETR
runs about twice as fast there), else fp32.  The choice is logged once.

With ``model.brain_mask`` active, a brain mask (:mod:`inference.brain_mask`,
deepbet) is found first: the sliding window runs on the grown mask's bounding
box only, and no voxel outside the grown mask is ever output.

The model's output is reduced to one lesion *margin* map on the model grid
(argmax: lesion logit minus the largest other logit; threshold: lesion
probability minus the threshold), resampled trilinearly to the source voxels
(:func:`inference.preprocess.to_source_grid`) and cut at zero, so the mask's
edges follow the source grid's finer voxels instead of the model's.  Each
lesion's ``peak_probability`` is its most confident voxel's margin turned back
into a lesion probability.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference

from config.schema import Model
from inference.brain_mask import BrainExtractor, BrainMaskError, BrainRegion
from inference.enhancement import EnhancementRule
from inference.lesions import find_lesions
from inference.model import load_model
from inference.preprocess import model_affine_lps, preprocess, to_source_grid
from inference.types import Box, Lesion, ModelProvenance, SegmentationResult, Volume
from inference.volume import load_series

LOGGER = logging.getLogger(__name__)

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
CROP_PAD_VOXELS = 8  # at most this much context each side of the grown brain mask's box


def context_pad(length: int, roi: int, interval: int, limit: int) -> int:
    """How many voxels of context (at most ``limit``) a box of ``length`` voxels can take in
    without one more window along the axis (windows of ``roi`` voxels every ``interval``).

    Context that would start one more row of windows is left out: on the benchmark's 1 mm whole
    brain at overlap 0.25 that is 48 windows instead of 80, with the same detections on the
    validation series (docs/inference.md).
    """
    windows = math.ceil(max(length - roi, 0) / interval) + 1
    return max(0, min(limit, roi + interval * (windows - 1) - length))


def cpu_supports_bf16(cpuinfo: str | None = None) -> bool:
    """True when /proc/cpuinfo lists AMX-BF16 or AVX512-BF16."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
        except OSError:
            return False
    flags = {
        word for line in cpuinfo.splitlines() if line.startswith("flags") for word in line.split()
    }
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def choose_device(config: Model) -> tuple[torch.device, str]:
    """``(device, precision)`` from configuration and the hardware; logged by the caller."""
    cuda = torch.cuda.is_available()
    device = torch.device(
        "cuda" if config.device == "cuda" or (config.device == "auto" and cuda) else "cpu"
    )
    if config.precision != "auto":
        return device, config.precision
    if device.type == "cuda":
        return device, "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return device, "bf16" if cpu_supports_bf16() else "fp32"


class Segmenter:
    """Runs one configured model on series; load once, segment many."""

    def __init__(self, model_config: Model, progress: bool = False) -> None:
        self.config = model_config
        #: a tqdm bar over the sliding-window batches (on a terminal: ``ai-node segment``)
        self.progress = progress
        self.device, self.precision = choose_device(model_config)
        self._model: torch.nn.Module | None = None
        self._sha256 = ""
        self._brain: BrainExtractor | None = None
        self._warned_enhancement = False

    @property
    def provenance(self) -> ModelProvenance:
        return ModelProvenance(
            name=self.config.name,
            version=self.config.version,
            weights_sha256=self._sha256,
            device=self.device.type,
            precision=self.precision,
            validated_for_clinical_use=self.config.validated_for_clinical_use,
        )

    def model(self) -> torch.nn.Module:
        if self._model is None:
            LOGGER.info(
                "inference on %s with %s (%s)",
                self.device,
                self.precision,
                "autocast" if self.precision == "bf16" else "no autocast",
            )
            self._model, self._sha256 = load_model(self.config, self.device)
        return self._model

    def segment(self, paths: Sequence[Path]) -> SegmentationResult:
        """Segment one series given its files; raises InferenceError subclasses with a reason."""
        start = time.perf_counter()
        volume = load_series(paths)
        loaded = time.perf_counter() - start
        result = self.segment_volume(volume)
        result.timings = {"load": loaded, **result.timings}
        return result

    def brain_extractor(self) -> BrainExtractor | None:
        """The brain-mask stage when ``model.brain_mask`` is active (loaded on first use)."""
        if self._brain is None and self.config.brain_mask.active:
            self._brain = BrainExtractor(self.config.brain_mask, self.device)
        return self._brain

    def segment_volume(self, volume: Volume) -> SegmentationResult:
        timings: dict[str, float] = {}
        if self._model is None:
            start = time.perf_counter()
            self.model()
            timings["model_load"] = time.perf_counter() - start
        brain = None
        extractor = self.brain_extractor()
        if extractor is not None:
            start = time.perf_counter()
            brain = extractor.extract(volume)
            timings["brain_mask"] = time.perf_counter() - start
        start = time.perf_counter()
        image = preprocess(volume, self.config.preprocessing)
        timings["preprocess"] = time.perf_counter() - start
        start = time.perf_counter()
        margin, box = self.margin_map(image, brain)
        timings["sliding_window"] = time.perf_counter() - start
        start = time.perf_counter()
        labels, lesions = self.postprocess(margin, model_affine_lps(image), volume, brain, box)
        timings["postprocess"] = time.perf_counter() - start
        LOGGER.info(
            "series %s: %d lesion(s)%s; %s",
            volume.series_instance_uid,
            len(lesions),
            f" (brain mask {brain.volume_ml:.0f} mL)" if brain is not None else "",
            ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()),
        )
        return SegmentationResult(volume, labels, lesions, self.provenance, timings)

    def margin_map(
        self, image: MetaTensor, brain: BrainRegion | None = None
    ) -> tuple[np.ndarray, Box | None]:
        """The decision margin on the model grid and the box the windows covered.

        With a brain mask, windows cover only its box (:meth:`window_box`); outside
        it the margin is -1 (no lesion).  Without one the box is None (everywhere).
        """
        box = self.window_box(image, brain)
        if box is None:
            return self.margin(self.sliding_window(image)), None
        margin = np.full(tuple(image.shape[1:]), -1.0, np.float32)
        margin[box] = self.margin(self.sliding_window(image[(slice(None), *box)]))
        return margin, box

    def window_box(self, image: MetaTensor, brain: BrainRegion | None) -> Box | None:
        """The model-grid box around the grown brain mask, with as much context as the windows
        that cover the mask's box can take in (at most ``CROP_PAD_VOXELS`` a side), or None."""
        if brain is None or not self.config.brain_mask.crop_sliding_window:
            return None
        shape = tuple(int(n) for n in image.shape[1:])
        inside = brain.inside(model_affine_lps(image), shape)
        if not inside.any():
            raise BrainMaskError("the brain mask does not overlap the model's field of view")
        where = np.argwhere(inside)
        window = self.config.sliding_window
        box = []
        for axis, size in enumerate(shape):
            start, stop = int(where[:, axis].min()), int(where[:, axis].max()) + 1
            roi = window.roi_size[axis]
            interval = max(int(roi * (1 - window.overlap)), 1)  # as MONAI scans
            pad = context_pad(stop - start, roi, interval, 2 * CROP_PAD_VOXELS)
            box.append(slice(max(start - pad // 2, 0), min(stop + pad - pad // 2, size)))
        return tuple(box)  # type: ignore[return-value]

    def _autocast(self) -> AbstractContextManager[object]:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def sliding_window(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``[C, x, y, z]`` (float32, on the CPU) for the model-grid image ``[1, x, y, z]``."""
        window = self.config.sliding_window
        model = self.model()
        inputs = torch.as_tensor(image).as_subclass(torch.Tensor)[None].to(self.device)
        with torch.inference_mode(), self._autocast():
            logits = sliding_window_inference(
                inputs,
                roi_size=window.roi_size,
                sw_batch_size=window.sw_batch_size,
                predictor=model,
                overlap=window.overlap,
                mode=window.mode,
                sw_device=self.device,
                device=torch.device("cpu"),
                progress=self.progress,
            )
        return torch.as_tensor(logits)[0].float()

    def lesion_probability(self, volume: Volume) -> np.ndarray:
        """The lesion probability on the source grid (0 outside the model's field of view).

        The same stages as :meth:`segment_volume` up to the decision rule, brain mask
        included (0 outside it); for choosing thresholds on validation series
        (:mod:`demo.training.tune`).
        """
        extractor = self.brain_extractor()
        brain = extractor.extract(volume) if extractor is not None else None
        image = preprocess(volume, self.config.preprocessing)
        support = self.window_box(image, brain)
        box = support or (slice(None),) * 3
        probability = np.zeros(tuple(image.shape[1:]), np.float32)
        probability[box] = self.probability(self.sliding_window(image[(slice(None), *box)]))
        out = to_source_grid(probability, model_affine_lps(image), volume, 0.0, support)
        if brain is not None:
            out[~brain.inside(volume.affine_lps, volume.array.shape)] = 0.0
        return out

    def probability(self, logits: torch.Tensor) -> torch.Tensor:
        """The lesion probability on the model grid: sigmoid of a single channel, else softmax."""
        if logits.shape[0] == 1:
            return torch.sigmoid(logits[0])
        return torch.softmax(logits, 0)[self.config.postprocessing.lesion_channel]

    def margin(self, logits: torch.Tensor) -> np.ndarray:
        """Positive where the lesion wins: the decision rule as one map on the model grid."""
        post = self.config.postprocessing
        channel = post.lesion_channel
        if logits.shape[0] == 1 or post.method == "threshold":
            return (self.probability(logits) - post.threshold).numpy()
        others = torch.cat([logits[:channel], logits[channel + 1 :]]).amax(0)
        return (logits[channel] - others).numpy()

    def postprocess(
        self,
        margin_model: np.ndarray,
        model_lps: np.ndarray,
        volume: Volume,
        brain: BrainRegion | None = None,
        box: Box | None = None,
    ) -> tuple[np.ndarray, list[Lesion]]:
        """Labels and lesions on the source grid from the margin on the model grid.

        With a brain mask, components mostly outside the grown mask are dropped and
        the rest clipped to it (``model.brain_mask.min_inside_fraction``), and those
        not enhancing (:mod:`inference.enhancement`,
        ``postprocessing.min_enhancement_ratio``) are dropped.  ``box``:
        where the windows ran (-1 elsewhere), so only source voxels that see it
        are resampled.
        """
        post = self.config.postprocessing
        margin = to_source_grid(margin_model, model_lps, volume, cval=-1.0, support=box)
        region = None
        if brain is not None:
            region = brain.inside(volume.affine_lps, volume.array.shape)
        return find_lesions(
            margin > 0,
            volume.affine_lps,
            post.min_lesion_mm3,
            margin,
            self.peak_margin(self.channels),
            to_probability=self.margin_probability,
            region=region,
            min_inside_fraction=self.config.brain_mask.min_inside_fraction,
            enhancement=self.enhancement_rule(volume, brain, region),
        )

    def enhancement_rule(
        self, volume: Volume, brain: BrainRegion | None, region: np.ndarray | None
    ) -> EnhancementRule | None:
        """``postprocessing.min_enhancement_ratio``, ``min_local_enhancement_ratio`` and
        ``edge_fraction`` as a rule, or None when they are off or there is no brain mask to judge
        by (logged)."""
        post = self.config.postprocessing
        ratio, local = post.min_enhancement_ratio, post.min_local_enhancement_ratio
        if ratio <= 0 and local <= 0 and post.edge_fraction <= 0:
            return None
        if brain is None or not np.isfinite(brain.median_intensity):
            if not self._warned_enhancement:  # once per Segmenter, not once per series
                LOGGER.warning(
                    "postprocessing.min_enhancement_ratio %g, min_local_enhancement_ratio %g "
                    "and edge_fraction %g need model.brain_mask: not applied",
                    ratio,
                    local,
                    post.edge_fraction,
                )
                self._warned_enhancement = True
            return None
        return EnhancementRule(
            volume.array,
            ratio,
            brain.median_intensity,
            volume.spacing,
            region,
            post.edge_fraction,
            local,
        )

    @property
    def channels(self) -> int:
        return self.config.unetr.out_channels

    def margin_probability(self, margin: float) -> float:
        """A margin value back to a lesion probability (inverse of :meth:`margin`).

        Threshold rules: probability = margin + threshold.  Argmax: the sigmoid of
        the margin, which is the softmax lesion probability of a two-channel model
        (with more channels an upper bound of it).
        """
        post = self.config.postprocessing
        if self.channels == 1 or post.method == "threshold":
            return float(np.clip(margin + post.threshold, 0.0, 1.0))
        return float(1.0 / (1.0 + np.exp(-np.clip(margin, -60.0, 60.0))))

    def peak_margin(self, channels: int) -> float:
        """``min_peak_probability`` on the margin's scale (-inf when off).

        Threshold rules: margin = probability - threshold.  Argmax: margin =
        lesion logit - largest other logit, which is the logit of the lesion
        probability for a two-channel model.
        """
        post = self.config.postprocessing
        if post.min_peak_probability <= 0:
            return -np.inf
        if channels == 1 or post.method == "threshold":
            return post.min_peak_probability - post.threshold
        return float(np.log(post.min_peak_probability / (1 - post.min_peak_probability)))
