"""The study's PDF report (reportlab), from its ``measurements.json``
document and a source header: patient and study header as in the sources,
what needs review, the measurement tables per series, the loads of both
tasks as a plot and a table, the model versions, and the limits.

Text is set in Bitstream Vera (shipped with reportlab, embedded in the
PDF); names in scripts Vera lacks use a CID font the reader supplies.
"""
from __future__ import annotations

import io
from typing import Any, Mapping, Sequence
from xml.sax.saxutils import escape

from reportlab.graphics.charts.barcharts import VerticalBarChart
from reportlab.graphics.charts.legends import Legend
from reportlab.graphics.shapes import Drawing, String
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from spinegate.dicom_io.key_images import DERIVED_WARNING
from spinegate.dicom_io.study import Header

__all__ = ["DOCUMENT_TITLE", "LIMITS", "render_pdf_report"]

DOCUMENT_TITLE = "spinegate lumbar spine MRI measurements"
LIMITS = (
    "Automatic measurements by spinegate for research use; not verified by a person and not for primary "
    "diagnosis. Vertebral bodies and discs are segmented by a network trained on routine sagittal spin-echo "
    "images; on other contrasts (water-fat gradient echo) it loses S1 and discs more often. Level names "
    "count from S1; where that anchor is missing or doubtful every level is marked unverified. Heights follow "
    "the centroid-slice minimum-rectangle definition and carry the validation mean absolute error of their "
    "structure kind (\u00b1 in the tables); discs come out thicker than manual outlines. Spinal loads are "
    "estimates of a subject-scaled OpenSim model for static postures (upright; 60\u00b0 trunk flexion with "
    "5 kg in each hand), not measurements. Results marked for review need a person's look before use."
)
_FONTS = {"regular": "Vera", "bold": "VeraBd", "cid": "HeiseiMin-W3"}
_GRID = TableStyle([("GRID", (0, 0), (-1, -1), 0.25, colors.grey), ("FONTNAME", (0, 0), (-1, 0), _FONTS["bold"]),
                    ("FONTNAME", (0, 1), (-1, -1), _FONTS["regular"]), ("FONTSIZE", (0, 0), (-1, -1), 8),
                    ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8e8e8")), ("VALIGN", (0, 0), (-1, -1), "TOP")])


def _table(rows: list[list[Any]], widths_mm: Sequence[float]) -> Table:
    table = Table(rows, colWidths=[w * mm for w in widths_mm], repeatRows=1, hAlign="LEFT")
    table.setStyle(_GRID)
    return table


def _register_fonts() -> None:
    if _FONTS["regular"] in pdfmetrics.getRegisteredFontNames():
        return
    pdfmetrics.registerFont(TTFont(_FONTS["regular"], "Vera.ttf"))
    pdfmetrics.registerFont(TTFont(_FONTS["bold"], "VeraBd.ttf"))
    pdfmetrics.registerFont(UnicodeCIDFont(_FONTS["cid"]))


def _styles() -> dict[str, ParagraphStyle]:
    base = getSampleStyleSheet()
    body = ParagraphStyle("body", base["BodyText"], fontName=_FONTS["regular"], fontSize=8.5, leading=11)
    return {"body": body,
            "h1": ParagraphStyle("h1", base["Heading1"], fontName=_FONTS["bold"], fontSize=14),
            "h2": ParagraphStyle("h2", base["Heading2"], fontName=_FONTS["bold"], fontSize=11, spaceBefore=8,
                                 keepWithNext=1),
            "warn": ParagraphStyle("warn", body, textColor=colors.HexColor("#b04000"), fontName=_FONTS["bold"])}


def _text(value: Any) -> str:
    """Escaped text; a text with characters Vera lacks (e.g. a Japanese
    name) is set in the CID font."""
    s = escape(str(value if value not in (None, "") else "-"))
    glyphs = pdfmetrics.getFont(_FONTS["regular"]).face.charToGlyph
    if all(ord(ch) in glyphs for ch in s):
        return s
    return f'<font name="{_FONTS["cid"]}">{s}</font>'


def _header(source: Header, doc: Mapping[str, Any], st: Mapping[str, ParagraphStyle]) -> list[Any]:
    name = [part for part in str(source.get("PatientName") or "").split("^") if part]
    rows = [("Patient", _text(", ".join(name[:1] + [" ".join(name[1:])]) if len(name) > 1 else "".join(name))), ("Patient ID", _text(source.get("PatientID"))),
            ("Birth date", _text(source.get("PatientBirthDate"))), ("Sex", _text(source.get("PatientSex"))),
            ("Study date", _text(source.get("StudyDate"))), ("Accession", _text(source.get("AccessionNumber"))),
            ("Study", _text(source.get("StudyDescription"))),
            ("Study Instance UID", _text(doc.get("study_instance_uid")))]
    table = Table([[Paragraph(k, st["body"]), Paragraph(v, st["body"])] for k, v in rows], colWidths=[35 * mm, 135 * mm])
    table.setStyle(TableStyle([("FONTSIZE", (0, 0), (-1, -1), 8), ("BOTTOMPADDING", (0, 0), (-1, -1), 1)]))
    return [Paragraph(_text(DOCUMENT_TITLE), st["h1"]), Paragraph(_text(DERIVED_WARNING), st["warn"]), table]


def _review(doc: Mapping[str, Any], st: Mapping[str, ParagraphStyle]) -> list[Any]:
    """The worklist entry, results with the same reasons in one series and
    level on one row."""
    review = doc.get("review") or {}
    out: list[Any] = [Paragraph("Review", st["h2"])]
    if not review.get("needed"):
        return out + [Paragraph("No result is flagged for review.", st["body"])]
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for i in review.get("items", []):
        why = "; ".join(r.split(" ", 1)[1] for r in i["review_reasons"]) or ", ".join(i["flags"])
        grouped.setdefault((i.get("series") or "", i.get("level") or "", why), []).append(i["result"])
    rows = [["Results", "Series", "Why they need review"]]
    rows += [[Paragraph(_text("; ".join(results)), st["body"]), Paragraph(_text(series), st["body"]),
              Paragraph(_text(why), st["body"])] for (series, _, why), results in grouped.items()]
    table = _table(rows, [80, 25, 65])
    return out + [Paragraph(f"{len(review['items'])} result(s) need a person's look before use.", st["warn"]), table]


def _pm(value: float | None, mae: float | None, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" + (f" \u00b1 {mae:.{digits}f}" if mae is not None else "")


def _series_tables(doc: Mapping[str, Any], st: Mapping[str, ParagraphStyle]) -> list[Any]:
    out: list[Any] = []
    described = {s["series_instance_uid"]: s["description"] for s in doc.get("series", [])}
    for s in doc.get("series", []):
        if s.get("structures"):
            out.append(Paragraph(_text(f"Spine: {s['description']}"), st["h2"]))
            if s.get("levels_unverified"):
                out.append(Paragraph(_text(f"Level names unverified: {s['levels_unverified']}"), st["warn"]))
            if anchor := s.get("levels_anchored_by_series"):
                out.append(Paragraph(_text(f"Level names from series '{described.get(anchor, anchor)}', "
                                           "whose count S1 anchors"), st["body"]))
            rows = [["Level", "Structure", "Height mm", "Volume cm\u00b3", "Review"]]
            rows += [[m["level"], "disc" if m["kind"] == "disc" else "body",
                      _pm(m["height_mm"], m.get("height_mae_mm"), 1), _pm(m["volume_cm3"], m.get("volume_mae_cm3"), 1),
                      "yes" if m.get("needs_review") else ""] for m in s["structures"]]
            out.append(_table(rows, [18, 22, 35, 35, 18]))
        if s.get("muscles"):
            out.append(Paragraph(_text(f"Paraspinal muscles: {s['description']}"), st["h2"]))
            out.append(_muscle_table(s["muscles"]))
    return out


def _muscle_table(muscles: Sequence[Mapping[str, Any]]) -> Table:
    """One row per level and muscle, right and left side by side (CSA on
    the mid-plane slice, else the level's mean; fat fraction, else fat
    infiltration)."""
    sides: dict[tuple[str, str], dict[str, Mapping[str, Any]]] = {}
    for m in muscles:
        name = m["label"].split(" ", 1)[1] if m["label"].startswith(("Right ", "Left ")) else m["label"]
        sides.setdefault((m["level"], name), {})[m["muscle"][-1]] = m

    def csa(m: Mapping[str, Any] | None) -> str:
        v = None if m is None else (m["csa_midplane_cm2"] if m.get("csa_midplane_cm2") is not None else m["csa_mean_cm2"])
        return "-" if v is None else f"{v:.2f}"

    def fat(m: Mapping[str, Any] | None) -> str:
        v = None if m is None else (m["fat_fraction"] if m.get("fat_fraction") is not None else m.get("fat_infiltration"))
        return "-" if v is None else f"{100 * v:.1f}"

    rows = [["Level", "Muscle", "CSA R cm\u00b2", "CSA L cm\u00b2", "Fat R %", "Fat L %", "Review"]]
    for (level, name), by_side in sides.items():
        r, left = by_side.get("R"), by_side.get("L")
        review = [side for side, m in (("R", r), ("L", left)) if m is not None and m.get("needs_review")]
        rows.append([level, name, csa(r), csa(left), fat(r), fat(left), " ".join(review)])
    return _table(rows, [16, 40, 22, 22, 18, 18, 16])


def _loads_plot(tasks: Sequence[Mapping[str, Any]], joints: Sequence[str]) -> Drawing:
    drawing = Drawing(170 * mm, 62 * mm)
    chart = VerticalBarChart()
    chart.x, chart.y, chart.width, chart.height = 18 * mm, 10 * mm, 110 * mm, 45 * mm
    chart.data = [[t["joints"][j]["compression_n"] for j in joints] for t in tasks]
    chart.categoryAxis.categoryNames = list(joints)
    chart.categoryAxis.labels.fontName = chart.valueAxis.labels.fontName = _FONTS["regular"]
    chart.categoryAxis.labels.fontSize = chart.valueAxis.labels.fontSize = 7
    chart.valueAxis.valueMin = 0
    palette = [colors.HexColor("#4a90c0"), colors.HexColor("#d06030")]
    for i in range(len(tasks)):
        chart.bars[i].fillColor = palette[i % 2]
    legend = Legend()
    legend.x, legend.y, legend.fontName, legend.fontSize = 132 * mm, 50 * mm, _FONTS["regular"], 7
    legend.colorNamePairs = [(palette[i % 2], t["description"][:34]) for i, t in enumerate(tasks)]
    drawing.add(chart)
    drawing.add(legend)
    drawing.add(String(18 * mm, 57 * mm, "Disc compression (N)", fontName=_FONTS["bold"], fontSize=8))
    return drawing


def _loads(doc: Mapping[str, Any], st: Mapping[str, ParagraphStyle]) -> list[Any]:
    bio = doc.get("biomechanics")
    if not bio:
        return []
    out: list[Any] = [Paragraph("Spinal loads (OpenSim model estimate)", st["h2"])]
    tasks = [t for t in bio.get("tasks", []) if t.get("joints")]
    if not tasks:
        return out + [Paragraph(_text(f"Not computed: {bio.get('error') or ', '.join(bio.get('flags', []))}"),
                                st["warn"])]
    joints = list(tasks[0]["joints"])
    out.append(_loads_plot(tasks, joints))
    rows = [["Joint"] + [f"{t['description']}: compression / shear N" for t in tasks]]
    rows += [[j] + [f"{t['joints'][j]['compression_n']:.0f} / {t['joints'][j]['anterior_shear_n']:.0f}" for t in tasks]
             for j in joints]
    header = [Paragraph(_text(c), st["body"]) for c in rows[0]]
    out.append(_table([header] + rows[1:], [20] + [70] * len(tasks)))
    infeasible = [t["description"] for t in tasks if not t.get("feasible", True)]
    if infeasible:
        out.append(Paragraph(_text("Infeasible (muscles too weak for the pose): " + "; ".join(infeasible)), st["warn"]))
    return out


def _models(doc: Mapping[str, Any], st: Mapping[str, ParagraphStyle]) -> list[Any]:
    rows = [["Component", "Version", "SHA-256"], ["spinegate", doc.get("software_version", ""), ""]]
    rows += [[m["name"], m["version"], m["sha256"][:16] + "\u2026"] for m in doc.get("models", [])]
    bio = doc.get("biomechanics") or {}
    if bio:
        rows.append(["OpenSim trunk model", "OpenSim 4.6", ""])
    return [Paragraph("Models", st["h2"]), _table(rows, [50, 70, 50])]


def render_pdf_report(doc: Mapping[str, Any], source: Header) -> bytes:
    """The PDF report of a study.

    Parameters
    ----------
    doc : mapping
        The study's ``measurements.json`` document (with its ``review``).
    source : pydicom.dataset.Dataset
        A source instance's header: the patient and study as the sources say.
    """
    _register_fonts()
    st = _styles()
    story: list[Any] = _header(source, doc, st) + [Spacer(1, 4 * mm)] + _review(doc, st) + _series_tables(doc, st)
    story += _loads(doc, st) + _models(doc, st)
    story += [Paragraph("Limits", st["h2"]), Paragraph(_text(LIMITS), st["body"])]
    buffer = io.BytesIO()
    SimpleDocTemplate(buffer, pagesize=A4, title=DOCUMENT_TITLE, author="spinegate", subject="lumbar spine MRI",
                      creator="spinegate", invariant=1, leftMargin=18 * mm, rightMargin=18 * mm,
                      topMargin=15 * mm, bottomMargin=15 * mm).build(story)
    return buffer.getvalue()
