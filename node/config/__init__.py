"""Settings: declared once in :mod:`node.config.settings` (keys, types, defaults, checks),
read from TOML and ``LACUNA_*`` environment variables by :mod:`node.config.load`."""

from node.config.load import load_settings
from node.config.settings import (
    RESULT_KINDS,
    DatabaseSettings,
    Destination,
    MetricsSettings,
    ModelSettings,
    ResultSettings,
    ScpSettings,
    Settings,
    StorageSettings,
    StudySettings,
    WorkerSettings,
)

__all__ = [
    "RESULT_KINDS", "DatabaseSettings", "Destination", "MetricsSettings", "ModelSettings",
    "ResultSettings", "ScpSettings", "Settings", "StorageSettings", "StudySettings",
    "WorkerSettings", "load_settings",
]
