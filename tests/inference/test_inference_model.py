"""UNETR from configuration: every hyperparameter, three weight formats, strict loading, SHA-256."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch
from monai.networks.nets import UNETR

from config.errors import ModelLoadError
from config.schema import Model
from inference.model import build_unetr, detect_format, load_model
from tests.helpers import TINY_UNETR

FULL_SIZE = {
    "img_size": [32, 32, 32],
    "feature_size": 16,
    "hidden_size": 768,
    "mlp_dim": 3072,
    "num_heads": 12,
}


def _config(weights: Path, fmt: str = "auto", **unetr: object) -> Model:
    return Model.model_validate(
        {"weights": weights, "format": fmt, "unetr": {**FULL_SIZE, **unetr}}
    )


@pytest.fixture(scope="module")
def full_size(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[UNETR, torch.Tensor, torch.Tensor, Path]:
    """A random-weight UNETR at the BTCV size (hidden 768, 12 heads, feature 16), on a small input."""
    torch.manual_seed(0)
    model = UNETR(
        1,
        2,
        (32, 32, 32),
        feature_size=16,
        hidden_size=768,
        mlp_dim=3072,
        num_heads=12,
        proj_type="conv",
        norm_name="instance",
        res_block=True,
        dropout_rate=0.0,
    ).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        expected = model(x)
    return model, x, expected, tmp_path_factory.mktemp("weights")


def _save(kind: str, model: UNETR, x: torch.Tensor, path: Path) -> None:
    state = model.state_dict()
    if kind == "state_dict":
        torch.save(state, path)
    elif kind == "checkpoint_state_dict":
        torch.save(
            {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}, "best": 0.8},
            path,
        )
    elif kind == "checkpoint_model":
        torch.save({"model": state, "optimizer": {}}, path)
    else:
        torch.jit.save(torch.jit.trace(model, x), str(path))


@pytest.mark.parametrize(
    "kind", ["state_dict", "checkpoint_state_dict", "checkpoint_model", "torchscript"]
)
def test_full_size_unetr_loads_in_every_format(full_size: tuple, kind: str) -> None:
    model, x, expected, folder = full_size
    path = folder / f"{kind}.pt"
    _save(kind, model, x, path)
    loaded, sha = load_model(_config(path))
    with torch.no_grad():
        assert torch.allclose(loaded(x), expected, atol=1e-5)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert detect_format(path) == ("state_dict" if kind == "state_dict" else kind.split("_")[0])
    path.unlink()


def test_every_hyperparameter_reaches_the_network() -> None:
    config = _config(
        Path("unused"),
        in_channels=2,
        out_channels=3,
        img_size=[32, 48, 32],
        feature_size=8,
        hidden_size=96,
        mlp_dim=192,
        num_heads=4,
        proj_type="perceptron",
        norm_name="batch",
        res_block=False,
        dropout_rate=0.1,
    ).unetr
    net: Any = build_unetr(config)  # nn.Module's attributes are dynamic
    assert (
        net.vit.patch_embedding.patch_embeddings[1].in_features == 2 * 16**3
    )  # perceptron, 2 channels
    assert net.out.conv.conv.out_channels == 3
    assert net.encoder1.layer.conv1.conv.out_channels == 8
    assert net.vit.blocks[0].mlp.linear1.out_features == 192
    assert net.vit.blocks[0].attn.num_heads == 4
    assert isinstance(net.encoder1.layer.norm1, torch.nn.BatchNorm3d)
    assert not hasattr(net.encoder1.layer, "conv3")  # res_block False: no residual projection
    assert net.vit.blocks[0].mlp.drop1.p == pytest.approx(0.1)
    assert net(torch.randn(1, 2, 32, 48, 32)).shape == (1, 3, 32, 48, 32)


def _small(**unetr: object) -> dict:
    return {**TINY_UNETR, **unetr}


def test_strict_loading_names_missing_and_unexpected_keys(tmp_path: Path) -> None:
    params = Model.model_validate({"unetr": _small()}).unetr
    state = build_unetr(params).state_dict()
    state.pop("out.conv.conv.weight")
    state["decoder9.extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ModelLoadError) as info:
        load_model(Model.model_validate({"weights": path, "unetr": _small()}))
    message = str(info.value)
    assert "missing keys (1): out.conv.conv.weight" in message
    assert "unexpected keys (1): decoder9.extra.weight" in message


def test_weights_for_another_size_name_the_shape_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save(
        build_unetr(Model.model_validate({"unetr": _small(feature_size=8)}).unetr).state_dict(),
        path,
    )
    with pytest.raises(ModelLoadError, match=r"shape mismatches \(\d+\): .*file \(8,"):
        load_model(Model.model_validate({"weights": path, "unetr": _small()}))


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(Model.model_validate({"weights": tmp_path / "nope.pt"}))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match="not a loadable PyTorch weights file"):
        load_model(Model.model_validate({"weights": junk, "unetr": _small()}))
    with pytest.raises(ModelLoadError, match="not a loadable TorchScript model"):
        load_model(
            Model.model_validate({"weights": junk, "format": "torchscript", "unetr": _small()})
        )
    odd = tmp_path / "odd.pt"
    torch.save({"weights_here": 1}, odd)
    with pytest.raises(ModelLoadError, match="checkpoint has none of the keys"):
        load_model(
            Model.model_validate({"weights": odd, "format": "checkpoint", "unetr": _small()})
        )
