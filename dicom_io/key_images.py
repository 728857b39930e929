"""Key images: one source slice with the result burned in, as a DICOM
Secondary Capture (highdicom ``SCImage``) for viewers that show neither SEG
nor SR.

`render_key_image` draws the slice (windowed, square pixels), each
segment's outline in its recommended colour with its name beside it,
measurement lines, orientation letters, a legend, and the banner "Derived —
not for primary diagnosis" (Pillow). `build_key_image` wraps the picture as
a true-colour SC image of the source's patient and study: Image Type
DERIVED\\SECONDARY, Burned In Annotation YES, the source slice in Source
Image Sequence and Referenced Series Sequence.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import highdicom as hd
import numpy as np
import reportlab
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from scipy import ndimage

from spinegate.dicom_io.charset import declare_character_set

__all__ = ["DERIVED_WARNING", "Outline", "MeasurementLine", "LegendRow", "KeyImageContent", "edge_letters",
           "render_key_image", "build_key_image"]

DERIVED_WARNING = "Derived — not for primary diagnosis"
_IMAGE_HEIGHT_PX = 640
_LEGEND_WIDTH_PX = 360
_BANNER_PX = 56
_FONT = 15
_RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Outline:
    """A segment on the slice: its mask (rows, cols), colour and name."""

    mask: np.ndarray
    colour_rgb: _RGB
    label: str


@dataclass(frozen=True)
class MeasurementLine:
    """A measured distance: two (row, col) pixel-centre points on the slice."""

    points_rc: tuple[tuple[float, float], tuple[float, float]]
    colour_rgb: _RGB = (255, 255, 255)


@dataclass(frozen=True)
class LegendRow:
    """One legend entry; ``review`` marks a result that needs review."""

    colour_rgb: _RGB
    text: str
    review: bool = False


@dataclass(frozen=True)
class KeyImageContent:
    """What one key image shows.

    Parameters
    ----------
    pixels : numpy.ndarray
        The source slice (rows, cols), modality values.
    pixel_spacing_mm : tuple of float
        (row spacing, column spacing).
    edges : tuple of str
        Orientation letters at the (left, right, top, bottom) edges (`edge_letters`).
    title : str
        First banner line after the warning (series and slice).
    notes : sequence of str
        Further banner lines (e.g. why the level names are unverified).
    """

    pixels: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    outlines: Sequence[Outline]
    lines: Sequence[MeasurementLine]
    legend: Sequence[LegendRow]
    edges: tuple[str, str, str, str]
    title: str
    notes: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.pixels.ndim != 2:
            raise ValueError(f"'pixels' must be 2D (rows, cols), got shape {self.pixels.shape}")
        for o in self.outlines:
            if o.mask.shape != self.pixels.shape:
                raise ValueError(f"outline '{o.label}' has shape {o.mask.shape}, the slice {self.pixels.shape}")
        if min(self.pixel_spacing_mm) <= 0:
            raise ValueError(f"'pixel_spacing_mm' must be positive, got {self.pixel_spacing_mm}")


def _letter(direction: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(direction)))
    return ("RL", "AP", "FH")[axis][int(direction[axis] > 0)]


def edge_letters(row_step_lps: Sequence[float], column_step_lps: Sequence[float]) -> tuple[str, str, str, str]:
    """Patient-direction letters (LPS: L, P, H positive) at the left, right,
    top and bottom edges of a slice whose columns advance by
    ``column_step_lps`` and rows by ``row_step_lps``."""
    col, row = np.asarray(column_step_lps, float), np.asarray(row_step_lps, float)
    return _letter(-col), _letter(col), _letter(-row), _letter(row)


def _windowed(pixels: np.ndarray) -> np.ndarray:
    """Grey levels 0-255 between the 1st and 99.5th percentiles of the
    non-background pixels (a window a reader would pick for anatomy)."""
    p = pixels.astype(np.float32)
    inside = p[p > p.min()] if (p > p.min()).any() else p.ravel()
    lo, hi = np.percentile(inside, (1.0, 99.5))
    return (np.clip((p - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def _font(size: int = _FONT) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Bitstream Vera, shipped with reportlab (a runtime dependency for the
    # PDF report): Pillow's built-in font lacks the dash and superscripts.
    return ImageFont.truetype(str(Path(reportlab.__file__).parent / "fonts" / "Vera.ttf"), size)


def render_key_image(content: KeyImageContent) -> np.ndarray:
    """The key image as an (rows, cols, 3) uint8 RGB array."""
    rows, cols = content.pixels.shape
    row_mm, col_mm = content.pixel_spacing_mm
    scale = _IMAGE_HEIGHT_PX / (rows * row_mm)  # display pixels per mm, square pixels
    width = max(1, round(cols * col_mm * scale))
    size = (width, _IMAGE_HEIGHT_PX)
    grey = Image.fromarray(_windowed(content.pixels)).resize(size, Image.Resampling.BILINEAR)
    picture = np.repeat(np.asarray(grey)[..., None], 3, axis=2)
    for outline in content.outlines:
        big = np.asarray(Image.fromarray(outline.mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 0
        edge = big & ~ndimage.binary_erosion(big, iterations=2)
        picture[edge] = outline.colour_rgb
    canvas = Image.new("RGB", (width + _LEGEND_WIDTH_PX, _IMAGE_HEIGHT_PX + _BANNER_PX), (0, 0, 0))
    canvas.paste(Image.fromarray(picture), (0, _BANNER_PX))
    draw = ImageDraw.Draw(canvas)
    font, small = _font(), _font(_FONT - 2)

    def at(r: float, c: float) -> tuple[float, float]:
        return (c + 0.5) * col_mm * scale, (r + 0.5) * row_mm * scale + _BANNER_PX

    for line in content.lines:
        (r0, c0), (r1, c1) = line.points_rc
        draw.line([at(r0, c0), at(r1, c1)], fill=line.colour_rgb, width=2)
        for r, c in line.points_rc:
            x, y = at(r, c)
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], outline=line.colour_rgb, width=2)
    for outline in content.outlines:
        rr, cc = np.nonzero(outline.mask)
        if rr.size:
            # Beside the outline, on the side away from the image's centre line.
            right = cc.mean() >= cols / 2 or cc.min() < 0.15 * cols
            x, y = at(float(rr.mean()), float(cc.max() if right else cc.min()))
            draw.text((min(x + 6, width - 4) if right else max(x - 6, 4), y), outline.label, fill=outline.colour_rgb,
                      font=font, anchor="lm" if right else "rm", stroke_width=2, stroke_fill=(0, 0, 0))
    left, right, top, bottom = content.edges
    mid_y = _BANNER_PX + _IMAGE_HEIGHT_PX / 2
    for text, xy, anchor in ((left, (6, mid_y), "lm"), (right, (width - 6, mid_y), "rm"),
                             (top, (width / 2, _BANNER_PX + 6), "mt"), (bottom, (width / 2, canvas.height - 6), "mb")):
        draw.text(xy, text, fill=(255, 255, 255), font=font, anchor=anchor, stroke_width=2, stroke_fill=(0, 0, 0))
    draw.text((8, 6), DERIVED_WARNING, fill=(255, 210, 0), font=font)
    draw.text((8, 6 + _FONT + 4), content.title, fill=(255, 255, 255), font=small)
    y = _BANNER_PX + 8
    for note in content.notes:
        draw.text((width + 10, y), note, fill=(255, 120, 80), font=small)
        y += _FONT + 2
    for row in content.legend:
        if y > canvas.height - _FONT:
            break
        draw.rectangle([width + 10, y + 2, width + 22, y + 14], fill=row.colour_rgb)
        draw.text((width + 28, y), row.text + ("  [review]" if row.review else ""),
                  fill=(255, 120, 80) if row.review else (255, 255, 255), font=small)
        y += _FONT + 3
    return np.asarray(canvas)


def build_key_image(
    rgb: np.ndarray, source: Dataset, frame_number: int | None, edges: tuple[str, str, str, str],
    series_instance_uid: str, sop_instance_uid: str, series_number: int, instance_number: int,
    series_description: str, software_version: str,
) -> hd.sc.SCImage:
    """The key image as a true-colour Secondary Capture of the source's study.

    Parameters
    ----------
    rgb : numpy.ndarray
        (rows, cols, 3) uint8, from `render_key_image`.
    source : pydicom.dataset.Dataset
        The source slice's instance (its header; pixels not needed).
    frame_number : int or None
        The source frame of a multi-frame source.
    edges : tuple of str
        The picture's (left, right, top, bottom) letters (`edge_letters`):
        its Patient Orientation.

    Raises
    ------
    ValueError
        If ``rgb`` is not (rows, cols, 3) uint8.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"'rgb' must be (rows, cols, 3) uint8, got {rgb.shape} {rgb.dtype}")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=rgb, photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8, coordinate_system=hd.CoordinateSystemNames.PATIENT, patient_orientation=(edges[1], edges[3]),
        series_instance_uid=series_instance_uid, series_number=series_number, sop_instance_uid=sop_instance_uid,
        instance_number=instance_number, manufacturer="spinegate", transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    # An unpaired body part: no Laterality is then required (General Series).
    sc.BodyPartExamined = source.get("BodyPartExamined") or "LSPINE"
    sc.SeriesDescription = series_description[:64]
    sc.DerivationDescription = "Segmentation outlines and measurements burned in by spinegate"
    sc.SoftwareVersions = software_version
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame_number:
        ref.ReferencedFrameNumber = frame_number
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator = codes.DCM.SourceImageForImageProcessingOperation.value, "DCM"
    purpose.CodeMeaning = codes.DCM.SourceImageForImageProcessingOperation.meaning
    ref.PurposeOfReferenceCodeSequence = [purpose]
    sc.SourceImageSequence = [ref]
    series = Dataset()
    series.SeriesInstanceUID = source.SeriesInstanceUID
    instance = Dataset()
    instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    series.ReferencedInstanceSequence = [instance]
    sc.ReferencedSeriesSequence = [series]
    declare_character_set(sc)
    return sc
