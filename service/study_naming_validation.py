"""Level names carried across the sagittal series of one study, checked
on real labelled subjects.

The shared data hold VB1 subjects imaged with two or three sequences in
one sitting, on one grid (data README: 02/03, 06/07/08, 10/11). Each case
sends one series whole and another with its bottom 40, 55 or 70 mm cropped
away (S1, then L5, out of the field) as 4 mm DICOM series of one study, in
one frame of reference; the cropped series is analysed alone and beside the
whole one. A body is misnamed when the manual body whose centroid lies
nearest its own has another level.

    python -m spinegate.service.study_naming_validation --data ../shared/data/lumbar_mri

writes ``sagittal_spine.study_naming_validation.json`` in ``--models``
(default: the committed model folder). VB1_10 and VB1_11 are held out
from training; the other subjects were trained on (the naming itself is
not trained).
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from spinegate.dicom_io.mr_writer import SeriesSpec, StudyInfo, write_mr_series
from spinegate.dicom_io.volume import centroid_lps_mm
from spinegate.service.config import OutputsConfig, RoutingRule, load_config
from spinegate.service.engines import Engines
from spinegate.service.pipeline import analyze_study

__all__ = ["PAIRS", "CROPS_MM", "write_cropped_series", "misnamed_bodies", "run_case", "main"]

# (whole series, cropped series): one subject, one sitting.
PAIRS = (("VB1_10", "VB1_11"), ("VB1_11", "VB1_10"), ("VB1_02", "VB1_03"), ("VB1_03", "VB1_02"),
         ("VB1_06", "VB1_07"), ("VB1_08", "VB1_06"))
CROPS_MM = (40, 55, 70)
# Neither the loads nor the key images and PDF bear on the names.
_OUTPUTS = OutputsConfig(key_images=False, pdf_report=False)


def write_cropped_series(data: Path, stem: str, crop_mm: int, study: StudyInfo, number: int, out: Path
                         ) -> tuple[list[Path], dict[str, np.ndarray]]:
    """A labelled volume as a 4 mm sagittal DICOM series with its bottom
    ``crop_mm`` (1 mm planes) cropped away; its files and the manual bodies'
    centroids as drawn, before cropping (level → LPS mm)."""
    import nibabel as nib

    from spinegate.inference.training.validation import VB_TABLE, crop_bottom, thick_slice_series

    image_file: Any = nib.load(str(data / f"{stem}_image.nii.gz"))  # a Nifti1Image; nibabel types it as any file image
    label_file: Any = nib.load(str(data / f"{stem}_label.nii.gz"))
    image, labels = np.asarray(image_file.dataobj), np.asarray(label_file.dataobj).astype(np.uint8)
    cut_image, _, cut_affine = crop_bottom(image, labels, image_file.affine, crop_mm)
    pixels, lps, _ = thick_slice_series(cut_image, cut_affine)
    files = write_mr_series(pixels, lps, study, SeriesSpec(number, f"SAG {stem} bottom {crop_mm} mm cropped", 3500,
                                                            100, 4.0), out)
    drawn_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image_file.affine  # the labels' RAS grid in LPS
    manual = {level: centroid_lps_mm(labels == value, drawn_lps) for value, level in VB_TABLE.items()
              if (labels == value).any()}
    return files, manual


def misnamed_bodies(series_entry: dict[str, Any], manual: dict[str, np.ndarray]) -> list[str]:
    """The bodies of a ``measurements.json`` series entry whose nearest
    manual body (by centroid) has another level (levels the labels hold)."""
    out = []
    for m in series_entry["structures"]:
        if m["kind"] == "vertebral_body" and m["level"] in manual:
            nearest = min(manual, key=lambda n: float(np.linalg.norm(manual[n] - m["centroid_lps_mm"])))
            if nearest != m["level"]:
                out.append(m["level"])
    return out


def _state(entry: dict[str, Any], manual: dict[str, np.ndarray]) -> dict[str, Any]:
    return {"misnamed": misnamed_bodies(entry, manual), "unverified": entry["levels_unverified"],
            "flags": [f for f in entry["flags"] if f.startswith(("level_naming", "more_bodies"))],
            "anchored_by_series": entry.get("levels_anchored_by_series")}


def run_case(engines: Engines, rules: Sequence[RoutingRule], data: Path, whole: str, cropped: str, crop_mm: int,
             work: Path) -> dict[str, Any]:
    """One case: the cropped series alone, then beside the whole one."""
    study = StudyInfo(uid_seed=f"study-naming-{whole}-{cropped}-{crop_mm}")
    whole_files, _ = write_cropped_series(data, whole, 0, study, 2, work / "in")
    cut_files, manual = write_cropped_series(data, cropped, crop_mm, study, 3, work / "in")
    def analysed(files: list[Path], name: str) -> dict[str, Any]:
        result = analyze_study(files, engines, rules, work / name, biomechanics=False, outputs=_OUTPUTS)
        return dict(json.loads(result.measurements_path.read_text()))

    alone = analysed(cut_files, "alone")["series"][0]
    doc = analysed(whole_files + cut_files, "together")
    together = next(s for s in doc["series"] if s["description"] == alone["description"])
    return {"whole": whole, "cropped": cropped, "crop_mm": crop_mm, "alone": _state(alone, manual),
            "together": _state(together, manual)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="../shared/data/lumbar_mri")
    ap.add_argument("--models", type=Path, default=Path(__file__).resolve().parent.parent / "inference" / "models")
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)
    engines, rules = Engines(args.models), load_config(environ={}).routing
    cases = []
    for whole, cropped in PAIRS:
        for crop in CROPS_MM:
            with tempfile.TemporaryDirectory() as work:
                cases.append(case := run_case(engines, rules, args.data, whole, cropped, crop, Path(work)))
            print(f"{whole} whole + {cropped} cropped {crop} mm: alone misnamed {case['alone']['misnamed']} "
                  f"unverified {bool(case['alone']['unverified'])}; together misnamed {case['together']['misnamed']} "
                  f"unverified {bool(case['together']['unverified'])} {case['together']['flags']}", flush=True)

    def count(side: str, misnamed: bool, unverified: bool) -> int:
        return sum(bool(c[side]["misnamed"]) is misnamed and bool(c[side]["unverified"]) is unverified for c in cases)

    summary = {side: {"right_verified": count(side, False, False), "right_unverified": count(side, False, True),
                      "misnamed_unverified": count(side, True, True), "misnamed_verified": count(side, True, False)}
               for side in ("alone", "together")}
    record = {"command": "python -m spinegate.service.study_naming_validation --data ../shared/data/lumbar_mri",
              "cases": cases, "summary": summary}
    (args.models / "sagittal_spine.study_naming_validation.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
