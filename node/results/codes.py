"""Every coded concept, device identity, series number and description that results carry.

Lesion classes as segmented property types (category: SCT 49755003 Morphologically abnormal
structure):

* LACI: SCT 230698000 *Lacunar infarction* (disorder).
* FCI: SCT 52674009 *Ischemia* (morphologic abnormality). SNOMED CT has no concept for focal
  cerebral ischemia as an imaging finding; the morphologic abnormality *Ischemia*, with the
  anatomic region *Cerebral white matter* carried beside it in every segment and measurement
  group, states exactly "ischemia in cerebral white matter" and, being a morphologic
  abnormality, belongs in the Morphologically Abnormal Structure category (CID 7151), where
  a disorder code would not.
* Unclassified: SCT 52988006 *Lesion*, for lesions without a T1 FLAIR to classify them on.
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from node.domain.lesions import LesionClass

MANUFACTURER = "Lacuna"
DEVICE_MODEL_NAME = "Lacuna tiny white-matter lesion node"
SOFTWARE_VERSION = "0.1.0"

SEG_SERIES_NUMBER = 9701
SR_SERIES_NUMBER = 9702
GSPS_SERIES_NUMBER = 9703
SC_SERIES_NUMBER = 9704
KOS_SERIES_NUMBER = 9705
NOT_FOR_CLINICAL_USE = "synthetic-trained model, not for clinical use"
# Maximum lengths of the VRs our free texts go into (PS3.5 table 6.2-1).
VR_MAX_LENGTH = {"SH": 16, "LO": 64, "ST": 1024, "LT": 10240}


def within(text: str, vr: str) -> str:
    """``text`` unchanged if it fits ``vr``'s maximum length, else ValueError: a text that
    carries the disclaimer is written to fit, never cut."""
    if len(text) > VR_MAX_LENGTH[vr]:
        raise ValueError(f"{text!r} is {len(text)} characters; {vr} holds {VR_MAX_LENGTH[vr]}")
    return text


SEG_CONTENT_DESCRIPTION = within(f"Lacuna lesions; {NOT_FOR_CLINICAL_USE}", "LO")
GSPS_CONTENT_DESCRIPTION = within(f"Lesion outlines; {NOT_FOR_CLINICAL_USE}", "LO")
GSPS_LAYER_DESCRIPTION = GSPS_CONTENT_DESCRIPTION
SEG_SERIES_DESCRIPTION = "Lacuna lesions SEG (NOT FOR CLINICAL USE)"
SR_SERIES_DESCRIPTION = "Lacuna lesions SR (NOT FOR CLINICAL USE)"
GSPS_SERIES_DESCRIPTION = "Lacuna lesion outlines GSPS (NOT FOR CLINICAL USE)"
SC_SERIES_DESCRIPTION = "Lacuna key images, derived (NOT FOR CLINICAL USE)"
KOS_SERIES_DESCRIPTION = "Lacuna rejection note: superseded results"
# IHE IOCM: the Key Object Selection title that withdraws the objects it lists.
REJECTED_FOR_QUALITY_REASONS = codes.DCM.RejectedForQualityReasons  # (113001, DCM)
SEG_CONTENT_LABEL = "LACUNA_LESIONS"

LACUNAR_INFARCTION = Code("230698000", "SCT", "Lacunar infarction")
ISCHEMIA = Code("52674009", "SCT", "Ischemia")
LESION = codes.SCT.Lesion

LESION_TYPE: dict[LesionClass, Code] = {
    LesionClass.FCI: ISCHEMIA,
    LesionClass.LACI: LACUNAR_INFARCTION,
    LesionClass.UNCLASSIFIED: LESION,
}
SEGMENT_LABEL: dict[LesionClass, str] = {
    LesionClass.FCI: "FCI (focal cerebral ischemia)",
    LesionClass.LACI: "LACI (lacunar infarction)",
    LesionClass.UNCLASSIFIED: "Unclassified lesion",
}
# Display colours as CIELab (L*, a*, b*): amber, red, blue.
SEGMENT_LAB: dict[LesionClass, tuple[float, float, float]] = {
    LesionClass.FCI: (85.0, 5.0, 80.0),
    LesionClass.LACI: (48.0, 68.0, 50.0),
    LesionClass.UNCLASSIFIED: (65.0, 0.0, -45.0),
}

CATEGORY = codes.SCT.MorphologicallyAbnormalStructure
ANATOMIC_REGION = codes.SCT.CerebralWhiteMatter
ALGORITHM_FAMILY = codes.DCM.ArtificialIntelligence
OBSERVER_DEVICE = codes.cid270.Device
PROCEDURE_REPORTED = codes.LN.BrainMRI  # LOINC 24590-2
VOLUME = codes.SCT.Volume
AREA = codes.SCT.Area
DIAMETER = codes.SCT.Diameter
MAXIMUM = codes.SCT.Maximum  # derivation: the largest over the lesion's slices
CERTAINTY_OF_FINDING = codes.DCM.CertaintyOfFinding  # the classifier's probability of the class
PERCENT = codes.UCUM.Percent
MILLIMETER = codes.UCUM.Millimeter
CUBIC_MILLIMETER = codes.UCUM.CubicMillimeter
SQUARE_MILLIMETER = codes.UCUM.SquareMillimeter
COMMENT = codes.DCM.Comment
# TID 1500 row 12: the document-level "Qualitative Evaluations" container.
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
T2_HYPERINTENSITY = codes.DCM.WhiteMatterT2Hyperintensity
T1_HYPOINTENSITY = codes.DCM.WhiteMatterT1Hypointensity
PRESENT = codes.SCT.Present
ABSENT = codes.SCT.Absent
