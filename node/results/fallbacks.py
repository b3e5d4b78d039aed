"""Results for viewers that cannot show a SEG: a Grayscale Softcopy Presentation State (GSPS)
with each lesion's outline and label over the T2 FLAIR images, and secondary-capture key
images with the outlines burned in, marked as derived and not for clinical use.

Coordinates are PIXEL units (column, row) with (0, 0) the top-left corner of the top-left
pixel, so the centre of pixel (row r, column c) is (c + 0.5, r + 0.5).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid
from skimage.measure import find_contours

from node.dicom.frames import attribute
from node.domain.lesions import Lesion, LesionClass, LesionSegmentation
from node.results import codes
from node.results.identity import ModelIdentity, NodeIdentity, contributing_equipment, equipment
from node.results.patient import copy_patient_and_study
from node.results.render import COLOURS, brain_window, window_to_uint8
from node.results.seg import tracking_id

SHORT_NAME = {LesionClass.FCI: "FCI", LesionClass.LACI: "LACI", LesionClass.UNCLASSIFIED: "Lesion"}


def lesion_caption(lesion: Lesion) -> str:
    """"LACI 2 (p 0.91, 3.5 mm)": class, lesion number, the classifier's confidence in that
    class, and the largest diameter."""
    text = f"{SHORT_NAME[lesion.lesion_class]} {lesion.number}"
    confidence = lesion.class_probability
    details = ([f"p {confidence:.2f}"] if confidence is not None else []) + [
        f"{lesion.largest_diameter_mm:.1f} mm"]
    return f"{text} ({', '.join(details)})"


def outlines(mask: np.ndarray) -> list[np.ndarray]:
    """Closed outlines ``(n, 2)`` of (column, row) PIXEL coordinates around the pixels of a 2D
    boolean ``mask``, one per connected piece, on the pixel edges."""
    padded = np.pad(mask.astype(np.float32), 1)
    contours = []
    for contour in find_contours(padded, 0.5):
        # find_contours gives (row, col) in padded index space on pixel centres; the 0.5 level
        # runs half a pixel outside the mask. Back to unpadded, then centre -> corner origin.
        points = contour[:, ::-1] - 1.0 + 0.5
        if not np.allclose(points[0], points[-1]):
            points = np.vstack([points, points[:1]])
        contours.append(points.astype(np.float32))
    return contours


def _copy_body_part(target: Dataset, source: Dataset) -> None:
    # Without Body Part Examined, General Series' Laterality (2C) is expected: a brain result
    # names its body part, the source's if it has one.
    target.BodyPartExamined = source.get("BodyPartExamined") or "BRAIN"


def _window(pixels: np.ndarray) -> tuple[float, float]:
    """(centre, width) of :func:`brain_window`, the window the montage and key images use."""
    low, high = brain_window(pixels)
    return (low + high) / 2, max(high - low, 1.0)


def build_presentation_state(
    source_images: list[Dataset],
    pixels: np.ndarray,
    result: LesionSegmentation,
    model: ModelIdentity,
    series_instance_uid: str,
    sop_instance_uid: str,
    source_frames: list[int | None] | None = None,
    tracking_uids: dict[int, str] | None = None,
    *,
    node: NodeIdentity,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """A GSPS over the T2 FLAIR (``source_images[k]`` and ``source_frames[k]`` are slice k's
    instance and frame, ``pixels`` the stored values): on each slice with lesions, each
    lesion's outline as a closed POLYLINE and its caption as text, on one graphic layer; a
    window over the brain; ``tracking_uids`` (lesion number -> UID) are the SR's, so the
    outlines and the measurements name the same lesion. A negative study gets one annotation
    on its middle slice that says so, for viewers that show neither SEG nor SR."""
    frames = source_frames or [None] * len(source_images)
    tracking = tracking_uids or {lesion.number: str(generate_uid()) for lesion in result.lesions}
    layer = hd.pr.GraphicLayer(layer_name="LACUNA_LESIONS", order=1,
                               description=codes.GSPS_LAYER_DESCRIPTION,
                               display_color=hd.color.CIELabColor(*codes.SEGMENT_LAB[LesionClass.LACI]))
    annotations = []
    for k in shown_slices(result):
        graphics, texts = [], []
        if not result.lesions:
            texts.append(hd.pr.TextObject(
                text_value=NEGATIVE_TEXT, units=hd.pr.AnnotationUnitsValues.PIXEL,
                anchor_point=(4.0, 20.0), anchor_point_visible=False, text_justification="LEFT"))
        for lesion in result.lesions:
            mask = result.lesion_numbers[k] == lesion.number
            if not mask.any():
                continue
            for outline in outlines(mask):
                graphics.append(hd.pr.GraphicObject(
                    graphic_type=hd.pr.GraphicTypeValues.POLYLINE, graphic_data=outline,
                    units=hd.pr.AnnotationUnitsValues.PIXEL,
                    tracking_id=tracking_id(lesion.number), tracking_uid=tracking[lesion.number]))
            rows, cols = np.nonzero(mask)
            anchor = (float(cols.max()) + 4.0, float(rows.min()))
            texts.append(hd.pr.TextObject(
                text_value=lesion_caption(lesion)[:64], units=hd.pr.AnnotationUnitsValues.PIXEL,
                anchor_point=(min(anchor[0], mask.shape[1] - 1.0), max(anchor[1], 1.0)),
                anchor_point_visible=False, text_justification="LEFT"))
        frame = frames[k]
        annotations.append(hd.pr.GraphicAnnotation(
            referenced_images=[source_images[k]], graphic_layer=layer,
            referenced_frame_number=frame, graphic_objects=graphics, text_objects=texts))
    centre, width = _window(pixels)
    referenced = list({str(ds.SOPInstanceUID): ds for ds in source_images}.values())
    state = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=referenced,
        series_instance_uid=series_instance_uid,
        series_number=codes.GSPS_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        **equipment(model, node),
        content_label="LACUNA_OUTLINES",
        content_description=codes.GSPS_CONTENT_DESCRIPTION,
        graphic_annotations=annotations,
        graphic_layers=[layer],
        # One window, so one explanation: a list (highdicom splits a bare string per letter).
        voi_lut_transformations=[hd.pr.SoftcopyVOILUTTransformation(
            window_center=[centre], window_width=[width],
            window_explanation=["Lacuna brain window"])],
    )
    state.SeriesDescription = codes.GSPS_SERIES_DESCRIPTION
    _copy_body_part(state, source_images[0])
    copy_patient_and_study(state, source_images[0])
    return state


NEGATIVE_TEXT = "Lacuna: no FCI or LACI lesion found"


def shown_slices(result: LesionSegmentation) -> list[int]:
    """The slices a fallback shows: those with lesions, or the middle slice of a negative study."""
    with_lesions = sorted({s for lesion in result.lesions for s in lesion.slices})
    return with_lesions or [result.labels.shape[0] // 2]


def patient_orientation(orientation: list[float]) -> tuple[str, str]:
    """Patient Orientation (0020,0020) of the row and column directions of an Image
    Orientation (Patient): up to two letters each, the larger component first."""
    letters = (("L", "R"), ("P", "A"), ("H", "F"))

    def describe(vector: np.ndarray) -> str:
        order = np.argsort(-np.abs(vector))
        return "".join(letters[i][0 if vector[i] > 0 else 1] for i in order[:2]
                       if abs(vector[i]) > 0.25) or "L"

    values = np.asarray([float(v) for v in orientation], dtype=np.float64)
    return describe(values[:3]), describe(values[3:])


def key_image_pixels(grey: np.ndarray, result: LesionSegmentation, k: int) -> np.ndarray:
    """Slice ``k`` of ``grey`` (the windowed uint8 volume) as RGB uint8 with each lesion
    outlined and ringed in its class colour and a banner that says what this is."""
    grey = grey[k]
    image = Image.fromarray(np.repeat(grey[..., np.newaxis], 3, axis=2))
    draw = ImageDraw.Draw(image)
    for lesion in result.lesions:
        mask = result.lesion_numbers[k] == lesion.number
        if not mask.any():
            continue
        colour = COLOURS[lesion.lesion_class.value]
        for outline in outlines(mask):
            draw.line([tuple(p) for p in outline.tolist()], fill=colour, width=1)
        rows, cols = np.nonzero(mask)
        cy, cx = rows.mean() + 0.5, cols.mean() + 0.5
        radius = max(8.0, 0.5 * float(max(np.ptp(rows), np.ptp(cols))) + 6.0)
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), outline=colour)
        draw.text((cx + radius + 2, cy - 6), lesion_caption(lesion), fill=colour)
    draw.rectangle((0, 0, image.width, 13), fill=(0, 0, 0))
    draw.text((2, 1), "DERIVED - Lacuna AI - NOT FOR CLINICAL USE", fill=(255, 120, 120))
    if not result.lesions:
        draw.text((2, 16), NEGATIVE_TEXT, fill=(255, 255, 255))
    return np.asarray(image, dtype=np.uint8)


def build_key_images(
    source_images: list[Dataset],
    pixels: np.ndarray,
    result: LesionSegmentation,
    model: ModelIdentity,
    series_instance_uid: str,
    sop_instance_uids: list[str],
    source_frames: list[int | None] | None = None,
    *,
    node: NodeIdentity,
) -> list[hd.sc.SCImage]:
    """One secondary-capture image per slice :func:`shown_slices` names (``sop_instance_uids``
    in slice order, one each), the outlines burned in, each referencing the source image (and
    frame) it shows, filed under the source's patient and study attributes."""
    lesion_slices = shown_slices(result)
    if len(sop_instance_uids) != len(lesion_slices):
        raise ValueError(f"{len(lesion_slices)} key images need as many SOP Instance UIDs")
    frames = source_frames or [None] * len(source_images)
    grey = window_to_uint8(pixels)  # one window for the whole series, computed once
    images = []
    for number, (k, uid) in enumerate(zip(lesion_slices, sop_instance_uids, strict=True), start=1):
        source = source_images[k]
        spacing = _slice_attribute(source, frames[k], "PixelSpacing")
        orientation = _slice_attribute(source, frames[k], "ImageOrientationPatient")
        image = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=key_image_pixels(grey, result, k),
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=series_instance_uid,
            series_number=codes.SC_SERIES_NUMBER,
            sop_instance_uid=uid,
            instance_number=number,
            manufacturer=codes.MANUFACTURER,
            pixel_spacing=tuple(float(v) for v in spacing) if spacing else None,  # type: ignore[arg-type]
            patient_orientation=patient_orientation(list(orientation)) if orientation else ("L", "P"),
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            contributing_equipment=[contributing_equipment(model, node)],
        )
        image.DeviceSerialNumber = node.serial_number
        image.ImageType = ["DERIVED", "SECONDARY"]
        image.BurnedInAnnotation = "YES"
        image.SeriesDescription = codes.SC_SERIES_DESCRIPTION
        image.DerivationDescription = codes.within(
            f"T2 FLAIR with lesion outlines by {model.label}; {codes.NOT_FOR_CLINICAL_USE}", "ST")
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        if frames[k] is not None:
            reference.ReferencedFrameNumber = frames[k]
        image.SourceImageSequence = DicomSequence([reference])
        _copy_body_part(image, source)
        copy_patient_and_study(image, source)
        images.append(image)
    return images


def _slice_attribute(dataset: Dataset, frame: int | None, keyword: str) -> list[float] | None:
    value = attribute(dataset, keyword, frame or 1)
    return None if value is None else [float(v) for v in value]
