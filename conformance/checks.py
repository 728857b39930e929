"""Checks of one DICOM object spinegate returned, each with a real reader:
dicom3tools' dciodvfy, dcmtk's dcmdump and (SR) dsr2xml in its default
strict mode, dcmqi (3D Slicer's reader: segimage2itkimage, tid1500reader),
and highdicom. Each check returns a `Check`; none raises on a bad object."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.uid import UID

__all__ = ["Check", "ToolMissing", "check_returned_object", "dciodvfy", "dcmdump", "dcmqi_seg", "dcmqi_sr",
           "dsr2xml", "highdicom_reread", "measurement_group_count", "tool"]

SEGMENTATION = UID("1.2.840.10008.5.1.4.1.1.66.4")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
ENCAPSULATED_PDF = UID("1.2.840.10008.5.1.4.1.1.104.1")
MEASUREMENT_GROUP = "125007"  # DCM "Measurement Group"
IMAGING_MEASUREMENTS = "126010"  # DCM "Imaging Measurements"
TOOL_TIMEOUT_S = 300


@dataclass(frozen=True)
class Check:
    """One check of one subject: what was expected, what was seen."""

    section: str
    name: str
    subject: str
    passed: bool
    expected: str
    observed: str

    def as_dict(self) -> dict:
        return asdict(self)


class ToolMissing(RuntimeError):
    """A peer tool the suite needs is not installed."""


def tool(name: str) -> str:
    """Path of a peer tool: on PATH, or beside this Python (dcmqi's pip
    package installs its programs into the virtual environment's bin)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        hint = "pip install dcmqi" if name in ("segimage2itkimage", "tid1500reader") else \
            "apt-get install dcmtk dicom3tools"
        raise ToolMissing(f"'{name}' is not installed ({hint})")
    return found


def _run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, errors="replace", timeout=TOOL_TIMEOUT_S, cwd=cwd,
                          env={**os.environ, "LC_ALL": "C.UTF-8"})


def _diagnostics(text: str, prefixes: tuple[str, ...]) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.startswith(prefixes)]


def dciodvfy(path: Path, section: str = "objects") -> Check:
    """dicom3tools' IOD verifier: no line starting with 'Error'."""
    proc = _run([tool("dciodvfy"), str(path)])
    errors = _diagnostics(proc.stdout + proc.stderr, ("Error",))
    return Check(section, "dciodvfy", path.name, not errors, "0 errors",
                 f"{len(errors)} errors" + (f": {errors[0]}" if errors else ""))


def dcmdump(path: Path, section: str = "objects") -> Check:
    """dcmtk's dcmdump reads the whole file with no warning or error."""
    proc = _run([tool("dcmdump"), "-q", str(path)])
    problems = _diagnostics(proc.stderr, ("W:", "E:", "F:"))
    ok = proc.returncode == 0 and not problems
    return Check(section, "dcmdump", path.name, ok, "exit 0, no warning",
                 f"exit {proc.returncode}" + (f": {problems[0]}" if problems else ""))


# dcmtk 3.6.7 says this of itself, not of the file: its character checker
# knows no UTF-8, so it skips the check (dciodvfy does check UTF-8 text).
DCMTK_NO_UTF8_CHECKER = "W: The VR checker does not support this Specific Character Set: ISO_IR 192"


def dsr2xml(path: Path, section: str = "objects") -> Check:
    """dcmtk's SR parser in its default (strict) mode converts the SR."""
    proc = _run([tool("dsr2xml"), str(path)])
    diagnostics = _diagnostics(proc.stderr, ("W:", "E:", "F:"))
    problems = [line for line in diagnostics if line != DCMTK_NO_UTF8_CHECKER]
    ok = proc.returncode == 0 and not problems and "<report" in proc.stdout
    note = " (dcmtk's character checker skips ISO_IR 192 text)" if len(problems) < len(diagnostics) else ""
    return Check(section, "dsr2xml (strict)", path.name, ok, "exit 0, no warning",
                 f"exit {proc.returncode}" + (f": {problems[-1]}" if problems else note))


def measurement_group_count(ds: pydicom.Dataset) -> int:
    """TID 1500 measurement groups under Imaging Measurements."""
    for item in ds.get("ContentSequence", []):
        name = item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else ""
        if item.get("ValueType") == "CONTAINER" and name == IMAGING_MEASUREMENTS:
            return sum(1 for child in item.get("ContentSequence", [])
                       if child.get("ValueType") == "CONTAINER"
                       and child.ConceptNameCodeSequence[0].CodeValue == MEASUREMENT_GROUP)
    return 0


def dcmqi_sr(path: Path, section: str = "objects") -> Check:
    """dcmqi's tid1500reader reads every measurement group of the SR."""
    expected = measurement_group_count(pydicom.dcmread(path))
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "sr.json"
        proc = _run([tool("tid1500reader"), "--inputDICOM", str(path), "--outputMetadata", str(out)])
        try:
            groups = len(json.loads(out.read_text()).get("Measurements", []))
        except (OSError, ValueError):
            groups = 0
    problems = _diagnostics(proc.stdout + proc.stderr, ("E:", "F:"))
    ok = proc.returncode == 0 and groups == expected > 0 and not problems
    return Check(section, "dcmqi tid1500reader", path.name, ok, f"{expected} measurement groups",
                 f"exit {proc.returncode}, {groups} groups" + (f": {problems[0]}" if problems else ""))


def dcmqi_seg(path: Path, section: str = "objects") -> Check:
    """dcmqi's segimage2itkimage converts every segment of the SEG."""
    expected = len(pydicom.dcmread(path, stop_before_pixels=True).SegmentSequence)
    with tempfile.TemporaryDirectory() as work:
        proc = _run([tool("segimage2itkimage"), "--inputDICOM", str(path), "--outputDirectory", work])
        images = len(list(Path(work).glob("*.nrrd")))
        try:
            described = sum(len(s) for s in json.loads((Path(work) / "meta.json").read_text())["segmentAttributes"])
        except (OSError, ValueError, KeyError):
            described = 0
    ok = proc.returncode == 0 and images == described == expected
    return Check(section, "dcmqi segimage2itkimage", path.name, ok, f"{expected} segments",
                 f"exit {proc.returncode}, {images} images, {described} described")


def highdicom_reread(path: Path, section: str = "objects") -> Check:
    """highdicom parses the object back into its typed form."""
    try:
        ds = pydicom.dcmread(path)
        if ds.SOPClassUID == SEGMENTATION:
            seg = hd.seg.Segmentation.from_dataset(ds)
            observed = f"{len(seg.SegmentSequence)} segments, {seg.pixel_array.shape[0]} frames"
        else:
            sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
            groups = sr.content.get_image_measurement_groups() + sr.content.get_planar_roi_measurement_groups() \
                + sr.content.get_volumetric_roi_measurement_groups()
            observed = f"{len(groups)} measurement groups"
        ok = True
    except Exception as e:  # highdicom raises many types for what it cannot parse
        ok, observed = False, f"{type(e).__name__}: {e}"[:300]
    return Check(section, "highdicom re-read", path.name, ok, "parsed", observed)


def check_returned_object(path: Path, section: str = "objects") -> list[Check]:
    """Every reader's check for one SEG or SR; dciodvfy and dcmdump for the
    key images (Secondary Capture) and the Encapsulated PDF."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    checks = [dciodvfy(path, section), dcmdump(path, section)]
    if ds.SOPClassUID in (SECONDARY_CAPTURE, ENCAPSULATED_PDF):
        return checks
    checks.append(highdicom_reread(path, section))
    if ds.SOPClassUID == SEGMENTATION:
        checks.append(dcmqi_seg(path, section))
    else:
        checks += [dsr2xml(path, section), dcmqi_sr(path, section)]
    return checks
