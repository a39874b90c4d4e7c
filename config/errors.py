"""The node's exception tree.

Every error the node raises on purpose derives from :class:`NodeError`, so a
worker or a handler can catch the whole tree, record the reason and carry on::

    NodeError
    ├── ConfigError       ae_config.yaml or a command-line override is invalid
    ├── StorageError      the instance store or the database failed
    │   └── InvalidUIDError   a UID that must not become a path
    ├── InferenceError    a series cannot be segmented (geometry, model, ...)
    │   ├── SeriesGeometryError  the series cannot be trusted as a volume
    │   └── ModelLoadError       weights that do not fit the configured network
    └── DeliveryError     a result could not be sent to a destination
        └── NoDestinationError  results kept: no destination is configured for them

Lower-layer exceptions (OSError, peewee, pydicom, torch) are translated at the
boundary with ``raise ... from exc`` so the reason stays readable.
"""

from __future__ import annotations


class NodeError(Exception):
    """Base of every error the node raises on purpose."""


class ConfigError(NodeError):
    """The configuration is invalid; the message names the file, key and value."""


class StorageError(NodeError):
    """The instance store or the database could not complete an operation."""


class InvalidUIDError(StorageError):
    """A UID is not a valid DICOM UID and must not be used in a path."""


class InferenceError(NodeError):
    """A series could not be segmented; the message is meant for a person."""


class SeriesGeometryError(InferenceError):
    """The series cannot be turned into a trustworthy volume."""


class ModelLoadError(InferenceError):
    """The configured weights do not load into the configured network."""


class DeliveryError(NodeError):
    """A result could not be delivered to a destination."""


class NoDestinationError(DeliveryError):
    """The results were written and kept, but no destination is configured for them."""
