"""The segmentation pipeline: DICOM series -> volume -> UNETR -> lesions in the series' own grid.

    from inference.pipeline import Segmenter
    result = Segmenter(config.model).segment(paths)

The model is loaded once, lazily, on the first series.  Device: CUDA when
present (``device: auto``), else CPU.  Precision (``precision: auto``): bf16
autocast on CUDA that supports it and on a CPU with AMX or AVX512-BF16 (UNETR
runs about twice as fast there), else fp32.  The choice is logged once.

The model's output is reduced to one lesion *margin* map on the model grid
(argmax: lesion logit minus the largest other logit; threshold: lesion
probability minus the threshold), resampled trilinearly to the source voxels
(:func:`inference.preprocess.to_source_grid`) and cut at zero, so the mask's
edges follow the source grid's finer voxels instead of the model's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from config.schema import Model
from inference.lesions import find_lesions
from inference.model import load_model
from inference.preprocess import model_affine_lps, preprocess, to_source_grid
from inference.types import ModelProvenance, SegmentationResult, Volume
from inference.volume import load_series

LOGGER = logging.getLogger(__name__)

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


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

    def segment_volume(self, volume: Volume) -> SegmentationResult:
        timings: dict[str, float] = {}
        if self._model is None:
            start = time.perf_counter()
            self.model()
            timings["model_load"] = time.perf_counter() - start
        start = time.perf_counter()
        image = preprocess(volume, self.config.preprocessing)
        timings["preprocess"] = time.perf_counter() - start
        start = time.perf_counter()
        logits = self.sliding_window(image)
        timings["sliding_window"] = time.perf_counter() - start
        start = time.perf_counter()
        labels, lesions = self.postprocess(logits, model_affine_lps(image), volume)
        timings["postprocess"] = time.perf_counter() - start
        LOGGER.info(
            "series %s: %d lesion(s); %s",
            volume.series_instance_uid,
            len(lesions),
            ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()),
        )
        return SegmentationResult(volume, labels, lesions, self.provenance, timings)

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

        The same stages as :meth:`segment_volume` up to the decision rule; for
        choosing thresholds on validation series (:mod:`demo.training.tune`).
        """
        image = preprocess(volume, self.config.preprocessing)
        probability = self.probability(self.sliding_window(image))
        return to_source_grid(probability.numpy(), model_affine_lps(image), volume, cval=0.0)

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
        self, logits: torch.Tensor, model_lps: np.ndarray, volume: Volume
    ) -> tuple[np.ndarray, list]:
        post = self.config.postprocessing
        margin = to_source_grid(self.margin(logits), model_lps, volume, cval=-1.0)
        return find_lesions(
            margin > 0,
            volume.affine_lps,
            post.min_lesion_mm3,
            margin,
            self.peak_margin(logits.shape[0]),
        )

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
