"""Who made a result: the algorithm (the model version) and the installation that ran it,
carried into every DICOM object we build."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import highdicom as hd
from pydicom.sr.codedict import codes as pydicom_codes

from node.results import codes


@dataclass(frozen=True)
class ModelIdentity:
    """The algorithm: a registered model version and the SHA-256 of its manifest."""

    name: str
    version: str
    manifest_sha256: str
    trained_on: str

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"


@dataclass(frozen=True)
class NodeIdentity:
    """The installation that ran the algorithm: a Device Observer UID and a serial number made
    once per node (one database) and kept (:mod:`node.services.node_identity`)."""

    device_uid: str
    serial_number: str


def algorithm_identification(model: ModelIdentity) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification of ``model``, for each SR measurement group."""
    return hd.sr.AlgorithmIdentification(name=model.name[:64], version=model.version[:64])


def segmentation_algorithm(model: ModelIdentity) -> hd.AlgorithmIdentificationSequence:
    """The SEG's Segmentation Algorithm Identification of ``model``."""
    return hd.AlgorithmIdentificationSequence(
        name=model.name[:64], family=codes.ALGORITHM_FAMILY, version=model.version[:64],
        source=codes.MANUFACTURER,
    )


def contributing_equipment(model: ModelIdentity, node: NodeIdentity) -> hd.ContributingEquipment:
    """The algorithm as IHE AI Results identifies it: Contributing Equipment with purpose
    (109102, DCM, "Processing Equipment") from CID 7005, the model as model name and software
    version, and the installation's serial number. (Device UID is not an attribute of this
    sequence; the installation's UID is the SR's Device Observer UID.)"""
    return hd.ContributingEquipment(
        manufacturer=codes.MANUFACTURER,
        purpose_of_reference=pydicom_codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model.name[:64],
        software_versions=[codes.SOFTWARE_VERSION, model.version[:64]],
        device_serial_number=node.serial_number,
        contribution_description=codes.within(
            f"Lesion segmentation and classification by {model.label}; "
            f"{codes.NOT_FOR_CLINICAL_USE}", "ST"),
    )


def equipment(model: ModelIdentity, node: NodeIdentity) -> dict[str, Any]:
    """The General Equipment attributes and the Contributing Equipment item that every image
    object we build (SEG, GSPS) carries, as highdicom constructor arguments."""
    return {
        "manufacturer": codes.MANUFACTURER,
        "manufacturer_model_name": model.label[:64],
        "software_versions": codes.SOFTWARE_VERSION,
        "device_serial_number": node.serial_number,
        "contributing_equipment": [contributing_equipment(model, node)],
    }
