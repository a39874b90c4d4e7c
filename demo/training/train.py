"""Train the demo UNETR on synthetic brains (CPU with bf16 autocast, or CUDA).

    python -m demo.training.train --minutes 80 --out models/demo_unetr

The network is built from the ``model.unetr`` section of the configuration, so
the weights always fit the default ``ae_config.yaml``.  Crops come from
:func:`demo.training.data.crop_stream` (``--generator phantom``), from the
domain-randomised :func:`demo.training.randomised.randomised_stream`
(``randomised``) or from both in turn (``mixed``), in worker processes; each step
trains on fresh crops and crops replayed from a pool (by default one of each;
on a GPU host ``--batch 8 --workers 14``), augmented with MONAI transforms
(flip, rotation and scaling, elastic deformation, intensity, bias field, noise,
blur and resolution; by the workers when there are several, so that the GPU is
not kept waiting).  The loss is MONAI ``DiceCELoss``.
The learning rate follows a cosine over the time budget.  Every
``--validate-minutes`` the model is scored on fixed validation crops; the best
weights so far are written atomically to ``<out>/weights.pt`` (plain state
dict) and the run state to ``<work>/checkpoint.pt`` (to resume with ``--resume``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import os
import random
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from queue import Empty
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from monai.losses import DiceCELoss

from config.loader import load_config
from demo.training.data import CropSettings, crop_stream
from demo.training.randomised import randomised_stream
from inference.model import build_unetr

LOGGER = logging.getLogger(__name__)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
GENERATORS = ("phantom", "randomised", "mixed")


def crops(
    generator: str, seed: int, settings: CropSettings, randomised_share: float = 0.5
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Crops from the phantom generator, the domain-randomised one, or both (``mixed``: a steady
    ``randomised_share`` of them randomised; 0.5 is one of each in turn)."""
    if generator == "phantom":
        return crop_stream(seed, settings)
    if generator == "randomised":
        return randomised_stream(seed, settings)
    if generator == "mixed":
        return interleave(
            crop_stream(seed, settings), randomised_stream(seed, settings), randomised_share
        )
    raise ValueError(f"unknown generator {generator!r}; expected one of {GENERATORS}")


def interleave(
    phantom: Iterator[tuple[np.ndarray, np.ndarray]],
    randomised: Iterator[tuple[np.ndarray, np.ndarray]],
    share: float,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``share`` of the crops from ``randomised``, spread evenly: 0.5 gives P R P R ..., 1/3 P P R."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"randomised share must lie between 0 and 1, not {share}")
    credit = 0.0
    while True:
        credit += share
        if credit >= 1.0 - 1e-9:
            credit -= 1.0
            yield next(randomised)
        else:
            yield next(phantom)


def _produce(
    seed: int,
    settings: CropSettings,
    queue: mp.Queue,  # type: ignore[type-arg]
    roi: int | None,
    generator: str = "phantom",
    randomised_share: float = 0.5,
) -> None:
    """Put crops on ``queue``; with ``roi`` set they are augmented here, ready to train on."""
    torch.set_num_threads(1)
    augment = augmentations(roi) if roi is not None else None
    for image, label in crops(generator, seed, settings, randomised_share):
        if augment is not None:
            out = augment({"image": image[None], "label": label[None]})
            image, label = np.asarray(out["image"])[0], np.asarray(out["label"])[0]
        queue.put((image.astype(np.float32), label.astype(np.float32)))


def start_producers(
    seed: int,
    settings: CropSettings,
    workers: int = 1,
    roi: int | None = None,
    generator: str = "phantom",
    randomised_share: float = 0.5,
) -> mp.Queue:  # type: ignore[type-arg]
    """Crops are drawn in ``workers`` processes; training never waits for one once the pool is full."""
    context = mp.get_context(
        "spawn"
    )  # the parent may hold a CUDA context, which must not be forked
    queue: mp.Queue = context.Queue(maxsize=8 * workers)  # type: ignore[type-arg]
    # One thread per worker.  On the 16-core GPU host, 14 workers with default thread pools ran 0.7 s per
    # step; with OMP_NUM_THREADS=1 set for the whole run, 0.1 s.
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update({name: "1" for name in THREAD_VARIABLES})
    try:
        for worker in range(workers):
            context.Process(
                target=_produce,
                args=(seed + 7919 * worker, settings, queue, roi, generator, randomised_share),
                daemon=True,
            ).start()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return queue


def next_samples(
    queue: mp.Queue,
    pool: deque,
    min_pool: int,
    take: bool,
    batch: int = 2,  # type: ignore[type-arg]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fresh crops when ``take`` (as many as are ready, at most ``batch - 1``; waiting only while the pool
    fills), the rest of the batch replayed from the pool."""
    fresh: list[tuple[np.ndarray, np.ndarray]] = []
    while take and len(fresh) < max(batch - 1, 1):
        try:
            crop = queue.get(block=len(pool) < min_pool, timeout=600)
        except Empty:
            break
        pool.append(crop)
        fresh.append(crop)
        if len(pool) >= min_pool and queue.empty():
            break
    return fresh + [random.choice(pool) for _ in range(batch - len(fresh))]


def augmentations(roi: int) -> mt.Compose:
    keys = ("image", "label")
    return mt.Compose(
        [
            mt.RandAffined(
                keys,
                spatial_size=(roi,) * 3,
                prob=0.6,
                rotate_range=(0.3,) * 3,
                scale_range=(0.12,) * 3,
                mode=("bilinear", "nearest"),
                padding_mode="border",
            ),
            mt.CenterSpatialCropd(keys, (roi,) * 3),
            mt.Rand3DElasticd(
                keys,
                sigma_range=(6, 9),
                magnitude_range=(40, 120),
                prob=0.1,
                mode=("bilinear", "nearest"),
                padding_mode="border",
            ),
            mt.RandFlipd(keys, prob=0.5, spatial_axis=0),
            mt.RandSimulateLowResolutiond(("image",), prob=0.1, zoom_range=(0.5, 0.9)),
            mt.RandGaussianSmoothd(
                ("image",), prob=0.1, sigma_x=(0.3, 1.0), sigma_y=(0.3, 1.0), sigma_z=(0.3, 1.0)
            ),
            mt.RandBiasFieldd(("image",), prob=0.2, coeff_range=(0.0, 0.15)),
            mt.RandAdjustContrastd(("image",), prob=0.2, gamma=(0.8, 1.25), retain_stats=True),
            mt.RandScaleIntensityd(("image",), factors=0.12, prob=0.5),
            mt.RandShiftIntensityd(("image",), offsets=0.06, prob=0.5),
            mt.RandGaussianNoised(("image",), prob=0.15, std=0.03),
        ]
    )


def to_batch(
    samples: list[tuple[np.ndarray, np.ndarray]], augment: mt.Compose | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``samples`` into a batch, augmenting each unless they were augmented by the producers."""
    images, labels = [], []
    for image, label in samples:
        out = {"image": image[None], "label": label[None]}
        if augment is not None:
            out = augment(out)
        images.append(torch.as_tensor(out["image"]).float())
        labels.append(torch.as_tensor(out["label"]).float())
    return torch.stack(images), torch.stack(labels)


def lr_at(elapsed: float, budget: float, peak: float) -> float:
    """Linear warm-up (two minutes, or 5 % of a shorter budget), then a cosine down to 2 % of ``peak``."""
    warmup = min(120.0, 0.05 * budget)
    if elapsed < warmup:
        return peak * max(elapsed / warmup, 0.05)
    return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(elapsed / budget, 1.0))))


def dice_score(
    model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor], autocast: bool
) -> float:
    model.eval()
    images, labels = data
    device = next(model.parameters()).device
    inter = total = 0.0
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=autocast):
        for start in range(0, len(images), 2):
            pred = model(images[start : start + 2].to(device)).float().argmax(1, keepdim=True).cpu()
            truth = labels[start : start + 2]
            inter += float((pred * truth).sum())
            total += float(pred.sum() + truth.sum())
    model.train()
    return 2 * inter / max(total, 1.0)


def save_atomic(obj: object, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=Path("ae_config.yaml"))
    parser.add_argument("--out", type=Path, default=Path("models/demo_unetr"))
    parser.add_argument("--minutes", type=float, default=80.0)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", type=int, default=64)
    parser.add_argument("--fresh-every", type=int, default=2, help="take fresh crops every N steps")
    parser.add_argument(
        "--batch", type=int, default=2, help="crops per step (fresh ones first, the rest replayed)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="crop-drawing processes; with more than one they also augment (for a GPU host)",
    )
    parser.add_argument(
        "--val-crops", type=int, default=16, help="fixed validation crops that pick the weights"
    )
    parser.add_argument("--validate-minutes", type=float, default=6.0)
    parser.add_argument(
        "--fp32", action="store_true", help="no bf16 autocast (CPUs without AVX512-BF16 or AMX)"
    )
    parser.add_argument(
        "--generator",
        choices=GENERATORS,
        default="phantom",
        help="training crops: the phantom generator, the domain-randomised one (issue 9), or "
        "both; validation crops come from the same mix",
    )
    parser.add_argument(
        "--randomised-share",
        type=float,
        default=0.5,
        help="with --generator mixed: the share of randomised crops, spread evenly",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/ainode_train"),
        help="where the resumable checkpoint (with optimiser state) goes",
    )
    parser.add_argument("--resume", action="store_true")
    parser.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from these weights (plain state dict) with a fresh optimiser and schedule",
    )
    parser.add_argument(
        "--keep-snapshots",
        action="store_true",
        help="also keep the weights of every validation in <work>/snapshots/",
    )
    return parser.parse_args(argv)


class Trainer:
    """One training run: model, optimiser, crop producer, replay pool and validation crops."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        config = load_config(args.config).model
        self.roi = config.unetr.img_size[0]
        spacing = float((config.preprocessing.spacing or (1.0, 1.0, 1.0))[0])
        intensity = config.preprocessing.intensity
        self.settings = CropSettings(
            size=self.roi + 8,
            spacing_mm=spacing,
            lower_percentile=intensity.lower_percentile,
            upper_percentile=intensity.upper_percentile,
        )
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # bf16: AVX512-BF16/AMX on the CPUs this was first trained on, tensor cores on a GPU;
        # --fp32 on CPUs without them (bf16 is emulated there, and slower)
        self.autocast = not args.fp32
        self.model = build_unetr(config.unetr).to(self.device)
        self.optimiser = torch.optim.AdamW(self.model.parameters(), lr=args.lr, weight_decay=1e-5)
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
        self.state: dict[str, Any] = {"step": 0, "seconds": 0.0, "best": -1.0, "history": []}
        self.losses: list[float] = []
        self.pool: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=args.pool)
        args.out.mkdir(parents=True, exist_ok=True)
        args.work.mkdir(parents=True, exist_ok=True)
        LOGGER.info(
            "UNETR %d parameters, ROI %d at %.2f mm, device %s, bf16 autocast %s",
            sum(p.numel() for p in self.model.parameters()),
            self.roi,
            spacing,
            self.device,
            self.autocast,
        )

    def resume(self) -> None:
        path = self.args.work / "checkpoint.pt"
        if path.exists():
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
            self.model.load_state_dict(ckpt["model"])
            self.optimiser.load_state_dict(ckpt["optimizer"])
            self.state = ckpt["state"]
            LOGGER.info("resumed at step %d", self.state["step"])

    def initialise(self, path: Path) -> None:
        """Fine-tune: start from existing weights; the first validation scores them before any step."""
        self.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        LOGGER.info("initialised from %s", path)

    def validation_crops(self) -> tuple[torch.Tensor, torch.Tensor]:
        stream = crops(
            self.args.generator,
            10_000 + self.args.seed,
            replace(self.settings, size=self.roi),
            self.args.randomised_share,
        )
        drawn = [next(stream) for _ in range(self.args.val_crops)]
        return (
            torch.stack([torch.as_tensor(i[None]) for i, _ in drawn]),
            torch.stack([torch.as_tensor(m[None]) for _, m in drawn]),
        )

    def step(self, images: torch.Tensor, labels: torch.Tensor, lr: float) -> None:
        for group in self.optimiser.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
            logits = self.model(images.to(self.device))
        loss = self.loss_fn(logits.float(), labels.to(self.device))
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimiser.step()
        self.losses.append(float(loss.detach()))
        self.state["step"] += 1
        if self.state["step"] % 50 == 0:
            LOGGER.info(
                "step %d  %.0f s  loss %.4f  lr %.2e",
                self.state["step"],
                self.state["seconds"],
                float(np.mean(self.losses[-50:])),
                lr,
            )

    def run(self) -> None:
        in_workers = self.args.workers > 1
        # the producers start first and fill their queue while this process draws the validation crops
        queue = start_producers(
            self.args.seed + self.state["step"],
            self.settings,
            self.args.workers,
            self.roi if in_workers else None,
            self.args.generator,
            self.args.randomised_share,
        )
        validation = self.validation_crops()
        augment = None if in_workers else augmentations(self.roi)
        budget = self.args.minutes * 60.0
        start = time.monotonic() - self.state["seconds"]
        next_val = time.monotonic() + self.args.validate_minutes * 60.0
        if self.args.init is not None and self.state["step"] == 0:
            self.validate(validation, 0.0)
        self.model.train()
        while (elapsed := time.monotonic() - start) < budget:
            self.state["seconds"] = elapsed
            take = self.state["step"] % self.args.fresh_every == 0
            samples = next_samples(queue, self.pool, max(8, self.args.batch), take, self.args.batch)
            self.step(*to_batch(samples, augment), lr_at(elapsed, budget, self.args.lr))
            if time.monotonic() >= next_val:
                next_val = time.monotonic() + self.args.validate_minutes * 60.0
                self.validate(validation, time.monotonic() - start)
        self.validate(validation, time.monotonic() - start)

    def validate(self, validation: tuple[torch.Tensor, torch.Tensor], elapsed: float) -> None:
        """Score, keep the best weights (plain state dict), save the resumable checkpoint and the log."""
        dice = dice_score(self.model, validation, self.autocast)
        state, out = self.state, self.args.out
        state["seconds"] = elapsed
        state["history"].append(
            {
                "step": state["step"],
                "seconds": round(elapsed, 1),
                "loss": float(np.mean(self.losses[-100:])) if self.losses else None,
                "val_dice": dice,
            }
        )
        LOGGER.info(
            "validation: step %d, %.1f min, crop Dice %.4f (best %.4f)",
            state["step"],
            elapsed / 60,
            dice,
            state["best"],
        )
        if self.args.keep_snapshots:
            (self.args.work / "snapshots").mkdir(exist_ok=True)
            save_atomic(
                self.model.state_dict(),
                self.args.work / "snapshots" / f"step{state['step']:06d}.pt",
            )
        if dice > state["best"]:
            state["best"] = dice
            save_atomic(self.model.state_dict(), out / "weights.pt")
            LOGGER.info("saved best weights to %s", out / "weights.pt")
        save_atomic(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimiser.state_dict(),
                "state": state,
            },
            self.args.work / "checkpoint.pt",
        )
        (out / "training_log.json").write_text(json.dumps(state["history"], indent=1))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    trainer = Trainer(args)
    if args.resume:
        trainer.resume()
    elif args.init is not None:
        trainer.initialise(args.init)
    trainer.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
