"""Lacuna's errors, one tree::

    LacunaError                  base; ``retryable`` says whether trying again may succeed
    ├── ConfigError              bad or missing setting; names the key; stops start-up
    ├── InstanceRejected         a received dataset we refuse; carries the DICOM status
    ├── StorageError             a file or row could not be persisted (retryable)
    ├── ModelError               a model package is missing, tampered with or unusable
    ├── JobError                 a processing job cannot finish
    │   ├── NotProcessable       the study lacks what processing needs (no T2 FLAIR)
    │   └── LeaseLost            this worker no longer holds the job (released or taken over)
    └── DeliveryError            a destination did not accept a result (retryable)
"""

from __future__ import annotations


class LacunaError(Exception):
    retryable = False


class ConfigError(LacunaError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config {key}: {message}")
        self.key = key


class InstanceRejected(LacunaError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class StorageError(LacunaError):
    retryable = True


class ModelError(LacunaError):
    pass


class JobError(LacunaError):
    pass


class NotProcessable(JobError):
    pass


class LeaseLost(JobError):
    """Raised before an effect (storing results, sending them) by a worker whose claim on the
    job ended: the effect belongs to the job's current holder."""


class DeliveryError(LacunaError):
    retryable = True
