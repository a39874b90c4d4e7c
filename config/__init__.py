"""Configuration of the node: ``load_config`` reads and validates ``ae_config.yaml``."""

from config.errors import ConfigError, NodeError
from config.loader import DEFAULT_CONFIG_PATH, load_config, log_effective
from config.schema import NodeConfig

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ConfigError",
    "NodeConfig",
    "NodeError",
    "load_config",
    "log_effective",
]
