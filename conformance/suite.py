"""The conformance suite: every claim of CONFORMANCE.md checked against a
running spinegate with dcmtk, dicom3tools, dcmqi and highdicom.

The suite is both the modality and the PACS: it sends with dcmtk's
echoscu/storescu and receives spinegate's SEG and SR in its own dcmtk
storescp, which the spinegate under test must have as an export
destination (``--pacs-ae`` at this machine's ``--pacs-port``). It writes
``report.json`` and ``REPORT.md`` and exits 0 only when every check passed.

Usage: ``conformance/run --host H --port P --ae AE [--out DIR]``.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian

from conformance.cases import StudyCase, matrix_case, status_cases, whole_study_cases
from conformance.checks import Check, ToolMissing, check_returned_object, tool
from conformance.encode import LOSSY, encoder_name
from conformance.pacs import StoreSCP, echoscu, storescu_statuses
from spinegate.dicom_io import codes as sg_codes

__all__ = ["Claims", "Target", "main", "measured_values", "read_claims", "run_suite", "write_report"]

STATEMENT = Path(__file__).with_name("CONFORMANCE.md")
_ROW = re.compile(r"^\|\s*([^|]+?)\s*\|\s*(1\.2\.840\.10008\.[0-9.]+)\s*\|(.*)$")


@dataclass(frozen=True)
class Claims:
    """What the statement says spinegate accepts as an SCP."""

    storage_classes: tuple[UID, ...]
    transfer_syntaxes: tuple[UID, ...]


def read_claims(statement: Path = STATEMENT) -> Claims:
    """The storage SOP classes (rows naming the SCP role) and transfer
    syntaxes tables of the conformance statement.

    Raises
    ------
    ValueError
        If either table is missing.
    """
    storage, syntaxes = [], []
    for line in statement.read_text(encoding="utf-8").splitlines():
        m = _ROW.match(line)
        if not m:
            continue
        name, uid, rest = m.groups()
        if uid.startswith("1.2.840.10008.1.2"):
            syntaxes.append(UID(uid))
        elif name.endswith("Storage") and "SCP" in rest:
            storage.append(UID(uid))
    if not storage or not syntaxes:
        raise ValueError(f"{statement} has no storage SOP class table (role SCP) or no transfer syntax table")
    return Claims(tuple(dict.fromkeys(storage)), tuple(dict.fromkeys(syntaxes)))


@dataclass(frozen=True)
class Target:
    """The spinegate under test and the suite's own AEs."""

    host: str
    port: int
    ae_title: str
    calling_ae: str = "SGCONFORMANCE"
    pacs_ae: str = "SGCONFORMPACS"
    pacs_port: int = 11113


def _association_checks(target: Target) -> list[Check]:
    section = "association"
    ok = echoscu(target.host, target.port, target.ae_title, target.calling_ae)
    checks = [Check(section, "C-ECHO (echoscu)", "Verification", ok.returncode == 0, "success",
                    f"exit {ok.returncode}")]
    wrong = f"NOT{target.ae_title}"[:16]
    bad = echoscu(target.host, target.port, wrong, target.calling_ae)
    said = bad.stdout + bad.stderr
    checks.append(Check(section, "A-ASSOCIATE-RJ (echoscu)", f"called AE title {wrong}",
                        bad.returncode != 0 and "Called AE Title Not Recognized" in said,
                        "rejected: called AE title not recognised",
                        next((line for line in said.splitlines() if "Reason" in line), f"exit {bad.returncode}")))
    return checks


def _status_checks(target: Target, work: Path) -> list[Check]:
    """Each refusal the statement promises, and a duplicate acknowledged."""
    section = "C-STORE statuses"
    template = sorted((work / "case00" / "src").glob("*.dcm"))[0]
    checks = []
    for case in status_cases(work / "status", template):
        seen = storescu_statuses([case.path], target.host, target.port, target.ae_title, target.calling_ae)
        if case.expected_status is None:
            passed = seen.negotiation_failed() and not seen.statuses
            expected, observed = "no presentation context accepted", seen.output.splitlines()[0] if seen.output \
                else f"statuses {[hex(s) for s in seen.statuses]}"
        else:
            passed = seen.statuses == (case.expected_status,)
            expected = f"0x{case.expected_status:04X}"
            observed = ", ".join(f"0x{s:04X}" for s in seen.statuses) or seen.output[:200]
        checks.append(Check(section, "storescu", case.description, passed, expected, observed))
    seen = storescu_statuses([template], target.host, target.port, target.ae_title, target.calling_ae)
    checks.append(Check(section, "storescu", "an instance already stored (duplicate)", seen.statuses == (0,),
                        "0x0000", ", ".join(f"0x{s:04X}" for s in seen.statuses) or seen.output[:200]))
    return checks


def _send(case: StudyCase, target: Target) -> Check:
    seen = storescu_statuses(list(case.files), target.host, target.port, target.ae_title, target.calling_ae,
                             case.storescu_options)
    passed = seen.statuses == (0,) * len(case.files) and seen.returncode == 0
    observed = f"{seen.statuses.count(0)}/{len(case.files)} success"
    if not passed:
        observed += f"; {seen.output.splitlines()[0] if seen.output else 'statuses ' + str(seen.statuses)}"
    return Check("storage", "storescu", f"{case.case_id}: {case.description}", passed,
                 f"{len(case.files)} x 0x0000 (storescu {' '.join(case.storescu_options) or 'default proposal'})",
                 observed)


def _content_checks(case: StudyCase, objects: dict[str, list[Path]]) -> list[Check]:
    """What the study's objects must say beyond being valid: the patient's
    name in the right character set, frame references into multi-frame
    sources, the loads where the study allows them."""
    section, checks = "content", []
    for modality, paths in objects.items():
        for path in paths:
            ds = pydicom.dcmread(path)
            subject = f"{case.case_id} {modality}"
            declared = ds.get("SpecificCharacterSet")
            checks.append(Check(section, "character set", subject,
                                declared == case.output_character_set and str(ds.PatientName) == case.patient_name,
                                f"{case.output_character_set or 'none (ASCII)'}; name {case.patient_name}",
                                f"{declared or 'none (ASCII)'}; name {ds.PatientName}"))
            if modality == "SEG" and case.multiframe:
                frames = [int(src.ReferencedFrameNumber) for f in ds.PerFrameFunctionalGroupsSequence
                          for d in f.DerivationImageSequence for src in d.SourceImageSequence]
                checks.append(Check(section, "frame references", subject,
                                    len(frames) == int(ds.NumberOfFrames) and min(frames) >= 1,
                                    "every SEG frame names its source frame",
                                    f"{len(frames)} of {ds.NumberOfFrames} frames, source frames "
                                    f"{min(frames, default=0)}-{max(frames, default=0)}"))
            if modality == "OT" and case.multiframe:
                source = ds.SourceImageSequence[0]
                checks.append(Check(section, "frame references", subject, int(source.get("ReferencedFrameNumber", 0)) >= 1,
                                    "the key image names its source frame",
                                    f"frame {source.get('ReferencedFrameNumber', 'none')}"))
            if modality == "SR":
                identified = {str(i.CodingSchemeDesignator) for i in ds.get("CodingSchemeIdentificationSequence", [])}
                checks.append(Check(section, "private scheme identified", subject,
                                    sg_codes.SCHEME in identified or sg_codes.SCHEME.encode() not in path.read_bytes(),
                                    f"{sg_codes.SCHEME} in (0008,0110) when used",
                                    ", ".join(sorted(identified)) or "no (0008,0110)"))
            if modality == "SR" and case.loads is not None:
                sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
                loads = len(sr.content.get_image_measurement_groups(finding_type=sg_codes.SPINAL_LOAD))
                checks.append(Check(section, "spinal loads", subject, (loads > 0) == case.loads,
                                    "load groups" if case.loads else "no load groups", f"{loads} load groups"))
    return checks


def measured_values(sr: pydicom.Dataset) -> list[tuple[str, str]]:
    """Every numeric content item of an SR in document order, as (concept
    name, value as written)."""
    values: list[tuple[str, str]] = []

    def walk(items: pydicom.Sequence) -> None:
        for item in items:
            if item.get("ValueType") == "NUM" and item.get("MeasuredValueSequence"):
                values.append((str(item.ConceptNameCodeSequence[0].CodeMeaning),
                               str(item.MeasuredValueSequence[0].NumericValue)))
            walk(item.get("ContentSequence", []))

    walk(sr.get("ContentSequence", []))
    return values


def _alike_checks(cases: list[StudyCase], srs: dict[str, Path]) -> list[Check]:
    """Studies carrying one image in a lossless encoding or a multi-frame
    form must measure exactly what its single-frame Explicit VR Little
    Endian form measures: decoding and multi-frame geometry change nothing."""
    checks = []
    for image in sorted({c.image for c in cases if c.image is not None}):
        same = [c for c in cases if c.image == image]
        reference = next((c for c in same if not c.multiframe and c.transfer_syntax == ExplicitVRLittleEndian), None)
        if reference is None or reference.case_id not in srs:
            continue  # the reference's own outputs check already failed
        expected = measured_values(pydicom.dcmread(srs[reference.case_id]))
        for case in same:
            if case is reference or case.transfer_syntax in LOSSY:
                continue
            got = measured_values(pydicom.dcmread(srs[case.case_id])) if case.case_id in srs else []
            differ = [(e, g) for e, g in zip(expected, got) if e != g]
            observed = f"{len(got)} values, {len(differ)} differ"
            if differ:
                observed += f"; first: {differ[0][1][0]} {differ[0][1][1]} (reference {differ[0][0][1]})"
            checks.append(Check("content", "measures as uncompressed", f"{case.case_id} SR",
                                len(got) == len(expected) and not differ,
                                f"the {len(expected)} values of {reference.case_id}", observed))
    return checks


def _collect(case: StudyCase, pacs: StoreSCP, deadline: float,
             study_timeout_s: float) -> tuple[Check, dict[str, list[Path]]]:
    expected = f"{case.seg_count} SEG + 1 SR + key images (>= 1 per SEG) + 1 PDF"

    def observed(objects: dict[str, list[Path]]) -> str:
        return (f"{len(objects['SEG'])} SEG + {len(objects['SR'])} SR + {len(objects['OT'])} key images + "
                f"{len(objects['DOC'])} PDF")

    try:
        wait_s = max(1.0, min(study_timeout_s, deadline - time.monotonic()))
        objects = pacs.wait_for(case.study_uid, case.seg_count, timeout_s=wait_s, n_key_images=case.seg_count,
                                n_pdf=1)
    except TimeoutError:
        objects = pacs.objects(case.study_uid)
        return Check("outputs", "received at the PACS", case.case_id, False, expected,
                     observed(objects) + " before the deadline"), objects
    passed = (len(objects["SEG"]) == case.seg_count and len(objects["SR"]) == 1
              and len(objects["OT"]) >= case.seg_count and len(objects["DOC"]) == 1)
    return Check("outputs", "received at the PACS", case.case_id, passed, expected, observed(objects)), objects


def _object_checks(case: StudyCase, modality: str, path: Path) -> list[Check]:
    return [dataclasses.replace(c, subject=f"{case.case_id} {modality}")
            for c in check_returned_object(path, "objects")]


def run_suite(target: Target, work: Path, pacs_folder: Path, timeout_s: float = 1800, study_timeout_s: float = 300,
              claims: Claims | None = None, log=print) -> list[Check]:  # type: ignore[no-untyped-def]
    """Build the studies, send them, collect and check what comes back.

    The outputs are awaited in the order the studies were sent, each for at
    most ``study_timeout_s`` (spinegate analyses one after another, so that
    bounds one study's quiet period, analysis and export), all within
    ``timeout_s``."""
    claims = claims or read_claims()
    deadline = time.monotonic() + timeout_s
    pacs = StoreSCP.start(pacs_folder, target.pacs_port, target.pacs_ae)
    try:
        log(f"building {len(claims.storage_classes) * len(claims.transfer_syntaxes)} + 3 studies in {work}")
        cases = [matrix_case(work, i, sop, ts) for i, (sop, ts) in
                 enumerate((s, t) for s in claims.storage_classes for t in claims.transfer_syntaxes)]
        cases += whole_study_cases(work)
        checks = _association_checks(target)
        for case in cases:
            checks.append(_send(case, target))
        log(f"sent {len(cases)} studies; C-STORE status cases next")
        checks += _status_checks(target, work)
        srs: dict[str, Path] = {}
        with ThreadPoolExecutor(max_workers=2) as pool:
            pending = []
            for case in cases:
                arrived, objects = _collect(case, pacs, deadline, study_timeout_s)
                checks.append(arrived)
                log(f"{case.case_id}: {arrived.observed}")
                checks += _content_checks(case, objects)
                if len(objects["SR"]) == 1:
                    srs[case.case_id] = objects["SR"][0]
                pending += [pool.submit(_object_checks, case, m, p) for m, paths in objects.items() for p in paths]
            for future in pending:
                checks += future.result()
        checks += _alike_checks(cases, srs)
    finally:
        pacs.stop()
    order = ["association", "storage", "C-STORE statuses", "outputs", "objects", "content"]
    return sorted(checks, key=lambda c: order.index(c.section))


def _versions() -> dict[str, str]:
    def first_line(args: list[str]) -> str:
        try:
            out = subprocess.run(args, capture_output=True, text=True, timeout=30)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError, ToolMissing):
            return "unknown"

    versions = {"dcmtk": first_line([tool("storescu"), "--version"]),
                "dicom3tools": first_line(["dpkg-query", "-W", "-f=${Version}", "dicom3tools"])}
    for package in ("dcmqi", "highdicom", "pydicom"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def write_report(checks: list[Check], target: Target, claims: Claims, out: Path, duration_s: float) -> dict:
    """``report.json`` (every check) and ``REPORT.md`` (per section, one row
    per subject, one column per check) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    failed = [c for c in checks if not c.passed]
    report = {
        "target": {"host": target.host, "port": target.port, "ae_title": target.ae_title},
        "date": datetime.date.today().isoformat(),
        "duration_s": round(duration_s, 1),
        "tools": _versions(),
        "claims": {"storage_classes": [f"{u} ({u.name})" for u in claims.storage_classes],
                   "transfer_syntaxes": [f"{u} ({u.name}; sent as written by {encoder_name(u)})"
                                         for u in claims.transfer_syntaxes]},
        "summary": {"checks": len(checks), "passed": len(checks) - len(failed), "failed": len(failed)},
        "checks": [c.as_dict() for c in checks],
    }
    (out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    lines = [
        "# spinegate conformance report", "",
        f"Run of `conformance/run` against {target.ae_title} at {target.host}:{target.port} on {report['date']} "
        f"({report['duration_s']} s). Tools: " + ", ".join(f"{k} {v}" for k, v in report["tools"].items()) + ".", "",
        f"**{report['summary']['passed']} of {len(checks)} checks passed**"
        + (f", {len(failed)} failed." if failed else "."), "",
        "| section | checks | passed |", "|---|---|---|",
    ]
    sections = list(dict.fromkeys(c.section for c in checks))
    for section in sections:
        in_section = [c for c in checks if c.section == section]
        lines.append(f"| {section} | {len(in_section)} | {sum(c.passed for c in in_section)} |")
    for section in sections:
        in_section = [c for c in checks if c.section == section]
        names = list(dict.fromkeys(c.name for c in in_section))
        lines += ["", f"## {section}", "", "| subject | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        for subject in dict.fromkeys(c.subject for c in in_section):
            cells = {c.name: c for c in in_section if c.subject == subject}
            row = [(("pass" if cells[n].passed else "**FAIL**") + f": {cells[n].observed}") if n in cells else ""
                   for n in names]
            lines.append(f"| {subject} | " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
    (out / "REPORT.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="conformance/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="spinegate's address")
    parser.add_argument("--port", type=int, default=11112, help="spinegate's DICOM port")
    parser.add_argument("--ae", default="SPINEGATE", help="spinegate's AE title")
    parser.add_argument("--calling-ae", default="SGCONFORMANCE", help="the AE title the suite sends as")
    parser.add_argument("--pacs-ae", default="SGCONFORMPACS", help="AE title of the suite's PACS (a destination "
                        "in spinegate's export.destinations)")
    parser.add_argument("--pacs-port", type=int, default=11113, help="port of the suite's PACS on this machine")
    parser.add_argument("--out", type=Path, default=Path("conformance/report"), help="report folder")
    parser.add_argument("--timeout-s", type=float, default=1800, help="deadline for all outputs to arrive")
    parser.add_argument("--study-timeout-s", type=float, default=300,
                        help="longest wait for one study's outputs after the previous study's arrived")
    args = parser.parse_args(argv)
    target = Target(args.host, args.port, args.ae, args.calling_ae, args.pacs_ae, args.pacs_port)
    # highdicom's legacy conversion warns of every window it cannot derive
    # (the multi-frame writer sets one afterwards).
    logging.getLogger("highdicom").setLevel(logging.ERROR)
    started = time.monotonic()
    # SIGTERM unwinds like Ctrl-C, so the suite's storescp is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    try:
        claims = read_claims()
        with tempfile.TemporaryDirectory(prefix="sg-conformance-") as work:
            checks = run_suite(target, Path(work) / "studies", Path(work) / "pacs", args.timeout_s,
                               args.study_timeout_s, claims)
    except (ToolMissing, ValueError) as e:
        print(f"conformance/run: {e}", file=sys.stderr)
        return 2
    report = write_report(checks, target, claims, args.out, time.monotonic() - started)
    summary = report["summary"]
    print(f"{summary['passed']} passed, {summary['failed']} failed")
    for c in checks:
        if not c.passed:
            print(f"FAILED {c.section} / {c.name} / {c.subject}: expected {c.expected}, saw {c.observed}")
    print(f"report: {args.out / 'REPORT.md'} and {args.out / 'report.json'}")
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
