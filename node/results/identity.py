"""Which model made a result: carried into every DICOM object we build."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import highdicom as hd
from pydicom.sr.codedict import codes as pydicom_codes
from pydicom.uid import generate_uid

from node.results import codes


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


def contributing_equipment(model: ModelIdentity) -> hd.ContributingEquipment:
    """The algorithm as IHE AI Results identifies it: Contributing Equipment with purpose
    (109102, DCM, "Processing Equipment") from CID 7005, the model as model name and software
    version, and a Device UID that changes with every model version."""
    equipment = hd.ContributingEquipment(
        manufacturer=codes.MANUFACTURER,
        purpose_of_reference=pydicom_codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model.name[:64],
        software_versions=[codes.SOFTWARE_VERSION, model.version[:64]],
        device_serial_number=codes.DEVICE_SERIAL_NUMBER,
        contribution_description=f"Lesion segmentation and classification by {model.label}; "
                                 f"{codes.NOT_FOR_CLINICAL_USE}"[:1024],
    )
    equipment.DeviceUID = model.device_uid
    return equipment


def equipment(model: ModelIdentity) -> dict[str, Any]:
    """The General Equipment attributes and the Contributing Equipment item that every image
    object we build (SEG, GSPS) carries, as highdicom constructor arguments."""
    return {
        "manufacturer": codes.MANUFACTURER,
        "manufacturer_model_name": model.label[:64],
        "software_versions": codes.SOFTWARE_VERSION,
        "device_serial_number": codes.DEVICE_SERIAL_NUMBER,
        "contributing_equipment": [contributing_equipment(model)],
    }
