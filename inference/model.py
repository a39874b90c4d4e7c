"""The segmentation network: MONAI UNETR built from configuration, weights loaded strictly.

Weights come in three formats (``model.format``, or ``auto`` to detect):

- ``state_dict``: ``torch.save(model.state_dict(), path)``;
- ``checkpoint``: a dict holding the state dict under ``state_dict`` or
  ``model`` (training checkpoints), ``module.`` prefixes from DataParallel or
  DistributedDataParallel stripped;
- ``torchscript``: ``torch.jit.save(torch.jit.script|trace(model), path)``.

State dicts are loaded with ``strict=True``; a mismatch raises
:class:`~config.errors.ModelLoadError` naming the missing and unexpected keys
(and shape mismatches), so a checkpoint for another configuration is never
half-loaded.  The SHA-256 of the weights file goes into every result.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from monai.networks.nets import UNETR

from config.errors import ModelLoadError
from config.schema import Model, UNETRParams

LOGGER = logging.getLogger(__name__)

CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict", "network")
MAX_KEYS_LISTED = 8


def build_unetr(params: UNETRParams) -> UNETR:
    """A UNETR with every constructor hyperparameter taken from configuration."""
    return UNETR(
        in_channels=params.in_channels,
        out_channels=params.out_channels,
        img_size=tuple(params.img_size),
        feature_size=params.feature_size,
        hidden_size=params.hidden_size,
        mlp_dim=params.mlp_dim,
        num_heads=params.num_heads,
        proj_type=params.proj_type,
        norm_name=params.norm_name,
        res_block=params.res_block,
        dropout_rate=params.dropout_rate,
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(config: Model, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, str]:
    """Build and load the configured network in eval mode; return it and the weights' SHA-256."""
    path = Path(config.weights)
    if not path.is_file():
        raise ModelLoadError(f"model weights not found: {path}")
    kind = detect_format(path) if config.format == "auto" else config.format
    LOGGER.info("loading %s weights from %s (%s)", config.architecture, path, kind)
    if kind == "torchscript":
        model = _load_torchscript(path, device)
    else:
        model = build_unetr(config.unetr)
        load_state(model, _read_state(path, kind), path)
        model = model.to(device)
    model.eval()
    return model, sha256_of(path)


def detect_format(path: Path) -> str:
    """``torchscript`` when the archive holds TorchScript code, else the dict's shape decides."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist()):
                return "torchscript"
    return "checkpoint" if _is_checkpoint(_torch_load(path)) else "state_dict"


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise ModelLoadError(f"{path}: not a loadable PyTorch weights file: {exc}") from exc


def _is_checkpoint(obj: object) -> bool:
    return isinstance(obj, Mapping) and any(
        key in obj and isinstance(obj[key], Mapping) for key in CHECKPOINT_KEYS
    )


def _read_state(path: Path, kind: str) -> Mapping[str, torch.Tensor]:
    obj = _torch_load(path)
    if not isinstance(obj, Mapping):
        raise ModelLoadError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    if kind == "checkpoint":
        key = next((k for k in CHECKPOINT_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            raise ModelLoadError(
                f"{path}: checkpoint has none of the keys {CHECKPOINT_KEYS}; found {sorted(obj)[:MAX_KEYS_LISTED]}"
            )
        obj = obj[key]
    return strip_prefix(obj, "module.")


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove a DataParallel-style prefix when every key carries it."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def load_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Strict loading with a readable account of what does not fit."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:
        raise ModelLoadError(
            f"{path}: weights do not fit the configured UNETR — "
            f"missing keys ({len(missing)}): {_few(missing)}; "
            f"unexpected keys ({len(unexpected)}): {_few(unexpected)}; "
            f"shape mismatches ({len(shapes)}): {_few(shapes)}"
        )
    model.load_state_dict(state, strict=True)


def _few(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_KEYS_LISTED])
    more = len(items) - MAX_KEYS_LISTED
    return (shown + (f", … and {more} more" if more > 0 else "")) or "none"


def _load_torchscript(path: Path, device: torch.device | str) -> torch.nn.Module:
    try:
        return torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # torch.jit raises RuntimeError and others
        raise ModelLoadError(f"{path}: not a loadable TorchScript model: {exc}") from exc
