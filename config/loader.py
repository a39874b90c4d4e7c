"""Load ``ae_config.yaml`` once, validate it, and freeze it.

Precedence, highest first: command-line overrides > environment (``AINODE_*``)
> the file > the schema's defaults.  Relative paths in the file (``data_dir``,
``model.weights``, ``tls.certificate`` / ``private_key`` / ``ca_certificates``) are
resolved against the directory of the file, so the node behaves the same whatever
directory it is started from.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from config.errors import ConfigError
from config.schema import NodeConfig

LOGGER = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = Path("ae_config.yaml")

#: environment variable -> dotted key it overrides
ENVIRONMENT_KEYS: dict[str, str] = {
    "AINODE_AE_TITLE": "ae_title",
    "AINODE_BIND": "bind",
    "AINODE_PORT": "port",
    "AINODE_DATA_DIR": "data_dir",
    "AINODE_DATABASE_URL": "database_url",
    "AINODE_LOG_LEVEL": "log_level",
    "AINODE_MODEL_WEIGHTS": "model.weights",
}


def load_config(
    path: Path | str = DEFAULT_CONFIG_PATH,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> NodeConfig:
    """Read, merge and validate the configuration.

    ``overrides`` maps dotted keys (``"port"``, ``"completion.idle_seconds"``)
    to values from the command line; ``None`` values are ignored.  Raises
    :class:`ConfigError` naming the file, the key and the bad value.
    """
    path = Path(path)
    raw = _read_yaml(path)
    env = os.environ if environ is None else environ
    for name, key in ENVIRONMENT_KEYS.items():
        if name in env:
            _set_dotted(raw, key, env[name])
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, key, value)
    try:
        config = NodeConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(path, exc)) from exc
    return _resolve_paths(config, path)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value


def _describe(path: Path, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"]) or "(top level)"
        value = error.get("input")
        shown = "" if isinstance(value, dict) else f" = {value!r}"
        lines.append(f"{path}: {key}{shown}: {error['msg']}")
    return "\n".join(lines)


def _resolve_paths(config: NodeConfig, path: Path) -> NodeConfig:
    base = path.resolve().parent
    data_dir = config.data_dir if config.data_dir.is_absolute() else base / config.data_dir
    weights = config.model.weights
    if not weights.is_absolute():
        weights = base / weights
    model = config.model.model_copy(update={"weights": weights})
    tls = config.tls.model_copy(
        update={
            key: base / value
            for key in ("certificate", "private_key", "ca_certificates")
            if isinstance(value := getattr(config.tls, key), Path) and not value.is_absolute()
        }
    )
    return config.model_copy(
        update={"data_dir": data_dir, "model": model, "tls": tls, "source": path.resolve()}
    )


def log_effective(config: NodeConfig) -> None:
    """Log the effective settings once, at start-up (no PHI in the configuration)."""
    LOGGER.info(
        "configuration %s: ae_title=%s bind=%s port=%d data_dir=%s peers=%s "
        "destinations=%d outputs=%s model=%s %s (%s)",
        config.source,
        config.ae_title,
        config.bind,
        config.port,
        config.data_dir,
        [p.ae_title for p in config.peers] or "any (loopback only)",
        len(config.destinations),
        ",".join(config.outputs),
        config.model.name,
        config.model.version,
        config.model.weights,
    )
