"""Which model made a result: carried into every DICOM object we build."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import generate_uid


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: str
    manifest_sha256: str
    trained_on: str

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    @property
    def device_uid(self) -> str:
        """A Device UID derived from the manifest: the same for one model version, new for
        every other (as IHE AI Results asks)."""
        return str(generate_uid(entropy_srcs=["lacuna-model", self.manifest_sha256]))
