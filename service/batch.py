"""``spinegate batch``: every study under a folder tree (and inside ``.zip``
archives) through the offline pipeline, resumable, into one long-form CSV,
one wide per-study CSV, and per-study outputs as ``spinegate analyze``
writes them.

Layout of ``OUT_DIR``: ``studies/<StudyInstanceUID>/`` (outputs and
``measurements.json``; ``failed.json`` instead when the study failed),
``measurements.csv`` (one row per study × series × structure ×
measurement), ``studies.csv`` (one row per study), ``.extracted/`` (the
unpacked archives). A study with a ``measurements.json`` is finished and
skipped on the next run; a failed one is tried again.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import zipfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from tqdm import tqdm

from spinegate.dicom_io.study import files_by_study
from spinegate.service.config import SpinegateConfig
from spinegate.service.review import result_flags

__all__ = ["BatchSummary", "find_studies", "run_batch", "long_rows", "wide_row", "write_csvs"]

log = logging.getLogger(__name__)

LONG_COLUMNS = ("study_instance_uid", "series_instance_uid", "series_description", "level", "structure",
                "measurement", "value", "unit", "flags")
_UNITS = {"_mm": "mm", "_cm3": "cm3", "_cm2": "cm2", "_ml": "mL", "_n": "N"}
_STRUCTURE_VALUES = ("height_mm", "volume_cm3")
_MUSCLE_VALUES = ("csa_midplane_cm2", "csa_mean_cm2", "rcsa", "fat_infiltration", "fat_fraction", "volume_ml",
                  "asymmetry")


@dataclass(frozen=True)
class BatchSummary:
    """What one run did: studies found, analysed now, skipped as finished,
    failed (study UID → reason), and files that were not DICOM."""

    found: int
    analysed: int
    skipped: int
    failed: Mapping[str, str]
    unreadable: int


def _unpack(archive: Path, into: Path) -> Path:
    """The archive's members under ``into`` (once; zipfile drops absolute
    paths and '..' from member names, so nothing lands outside)."""
    digest = hashlib.sha256(str(archive.resolve()).encode()).hexdigest()[:12]
    target = into / f"{archive.stem}-{digest}"
    done = target / ".unpacked"
    if not done.exists():
        with zipfile.ZipFile(archive) as z:
            z.extractall(target)
        done.touch()
    return target


def find_studies(in_dir: Path, out_dir: Path) -> tuple[dict[str, list[Path]], int]:
    """Study Instance UID → its files under ``in_dir`` (archives unpacked
    into ``out_dir/.extracted``), and how many files were not DICOM."""
    files: list[Path] = []
    for p in sorted(in_dir.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        if zipfile.is_zipfile(p):
            try:
                files += sorted(f for f in _unpack(p, out_dir / ".extracted").rglob("*")
                                if f.is_file() and not f.name.startswith("."))
            except (zipfile.BadZipFile, OSError) as e:
                log.warning("archive not read file=%s: %s", p.name, type(e).__name__)
            continue
        files.append(p)
    studies, unreadable = files_by_study(files)
    return studies, len(unreadable)


# One engine set per worker process, loaded by its initializer.
_worker: dict[str, Any] = {}


def _init_worker(config: SpinegateConfig, threads: int) -> None:
    from threadpoolctl import threadpool_limits

    from spinegate.service.engines import Engines

    # The worker's share of the cores, for BLAS as for ONNX Runtime: more
    # threads than cores make each wait on the others (service.pipeline).
    threadpool_limits(limits=threads, user_api="blas")
    _worker["config"] = config
    _worker["engines"] = Engines(config.inference.model_dir, threads, axial_precision=config.inference.axial_precision,
                                 backend=config.inference.backend)


def _analyse_one(study_uid: str, paths: Sequence[Path], out: Path) -> tuple[str, str]:
    """(study UID, failure reason or '') — a failure is recorded, not raised."""
    from spinegate.service.pipeline import StudyFailed, analyze_study

    config = _worker["config"]
    try:
        analyze_study(paths, _worker["engines"], config.routing, out, config.biomechanics.enabled,
                      outputs=config.outputs)
    except StudyFailed as e:
        reason = f"{e.reason}: {e}"
    except Exception as e:  # one study's failure must not stop the batch
        log.exception("study failed study_uid=%s", study_uid)
        reason = f"internal_error: {type(e).__name__}: {e}"
    else:
        (out / "failed.json").unlink(missing_ok=True)
        return study_uid, ""
    out.mkdir(parents=True, exist_ok=True)
    (out / "failed.json").write_text(json.dumps({"study_instance_uid": study_uid, "reason": reason}, indent=1))
    return study_uid, reason


def run_batch(in_dir: Path, out_dir: Path, config: SpinegateConfig, workers: int = 1,
              progress: bool = True) -> BatchSummary:
    """Analyse every unfinished study under ``in_dir``; write the CSVs.

    ``workers`` processes share the machine's cores (ONNX Runtime threads
    per worker: cores // workers, at least one).

    Raises
    ------
    ValueError
        If ``workers`` < 1.
    spinegate.inference.engine.EngineError
        If a model the routing names cannot be loaded.
    """
    if workers < 1:
        raise ValueError(f"'workers' must be >= 1, got {workers}")
    out_dir.mkdir(parents=True, exist_ok=True)
    studies, unreadable = find_studies(in_dir, out_dir)
    todo = {uid: p for uid, p in studies.items() if not _finished(out_dir / "studies" / uid)}
    failed: dict[str, str] = {}
    bar = tqdm(total=len(todo), unit="study", desc="spinegate batch", disable=not progress)
    threads = max(1, (os.cpu_count() or 1) // workers)
    # The models load here first, so a missing one stops the batch with its
    # error (EngineError) instead of failing every study.
    _init_worker(config, threads)
    for rule in config.routing:
        _worker["engines"].model_info(rule.engine)
    if workers == 1:
        outcomes: Iterable[tuple[str, str]] = (_analyse_one(uid, p, out_dir / "studies" / uid)
                                               for uid, p in todo.items())
        failed = _collect(outcomes, bar)
    else:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(config, threads)) as pool:
            futures = [pool.submit(_analyse_one, uid, p, out_dir / "studies" / uid) for uid, p in todo.items()]
            failed = _collect((f.result() for f in as_completed(futures)), bar)
    bar.close()
    write_csvs(out_dir, sorted(studies))
    log.info("batch done studies=%d analysed=%d skipped=%d failed=%d", len(studies), len(todo), len(studies) - len(todo),
             len(failed))
    return BatchSummary(len(studies), len(todo) - len(failed), len(studies) - len(todo), failed, unreadable)


def _finished(folder: Path) -> bool:
    # A failed study may leave a measurements.json (why its series were skipped): failed.json decides.
    return (folder / "measurements.json").exists() and not (folder / "failed.json").exists()


def _collect(outcomes: Iterable[tuple[str, str]], bar: Any) -> dict[str, str]:
    failed = {}
    for uid, reason in outcomes:
        if reason:
            failed[uid] = reason
        bar.update(1)
    return failed


def _unit(name: str) -> str:
    return next((u for suffix, u in _UNITS.items() if name.endswith(suffix)), "1")


# Radiomics block of measurements.json → CSV measurement prefix; intensity
# features are in the series' arbitrary units.
_RADIOMICS_REGIONS = {"whole_structure": "radiomics_whole", "central_slice": "radiomics_central_slice",
                      "shape": "radiomics_shape"}
_RADIOMICS_UNITS = {"skewness": "1", "kurtosis": "1", "entropy_bits": "bit", "n_voxels": "1", "elongation": "1",
                    "flatness": "1", "volume_cm3": "cm3", "major_axis_mm": "mm", "minor_axis_mm": "mm",
                    "least_axis_mm": "mm"}


def _radiomics_values(block: Mapping[str, Any] | None) -> list[tuple[str, Any, str]]:
    """(measurement, value, unit) of a structure's radiomics (``outputs.radiomics``)."""
    if not block:
        return []
    return [(f"{prefix}_{feature}", value, _RADIOMICS_UNITS.get(feature, "arb"))
            for region, prefix in _RADIOMICS_REGIONS.items() for feature, value in block[region].items()]


def long_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per series × structure × measurement (and per load) of a
    ``measurements.json`` document (`LONG_COLUMNS`)."""
    uid = doc["study_instance_uid"]
    rows = []
    for s in doc.get("series", []):
        base = {"study_instance_uid": uid, "series_instance_uid": s["series_instance_uid"],
                "series_description": s["description"]}
        for m in s.get("structures", []):
            flags = "; ".join(result_flags(m, s))
            for name in _STRUCTURE_VALUES:
                rows.append({**base, "level": m["level"], "structure": m["kind"], "measurement": name,
                             "value": m[name], "unit": _unit(name), "flags": flags})
            if m.get("t2_ms"):
                rows.append({**base, "level": m["level"], "structure": m["kind"], "measurement": "t2_mean_ms",
                             "value": m["t2_ms"]["mean"], "unit": "ms", "flags": flags})
            for name, value, unit in _radiomics_values(m.get("radiomics")):
                rows.append({**base, "level": m["level"], "structure": m["kind"], "measurement": name,
                             "value": value, "unit": unit, "flags": flags})
        for m in s.get("muscles", []):
            for name in _MUSCLE_VALUES:
                if m.get(name) is not None:
                    rows.append({**base, "level": m["level"], "structure": m["muscle"], "measurement": name,
                                 "value": m[name], "unit": _unit(name), "flags": "; ".join(result_flags(m, s))})
    bio = doc.get("biomechanics") or {}
    for t in bio.get("tasks", []):
        base = {"study_instance_uid": uid, "series_instance_uid": "", "series_description": "",
                "flags": "; ".join(list(bio.get("flags", [])) + list(t.get("flags", [])))}
        for joint, v in t.get("joints", {}).items():
            for name in ("compression_n", "anterior_shear_n"):
                rows.append({**base, "level": joint, "structure": "joint", "measurement": f"{t['name']}_{name}",
                             "value": v[name], "unit": "N"})
        for body, v in t.get("vertebral_body_compression_n", {}).items():
            rows.append({**base, "level": body, "structure": "vertebral_body",
                         "measurement": f"{t['name']}_compression_n", "value": v, "unit": "N"})
    return rows


def wide_row(doc: Mapping[str, Any]) -> dict[str, Any]:
    """One study on one row: the sagittal series with the most structures
    (``<level>_<measurement>``), the axial series with the most muscle
    results (``<muscle>_<level>_<measurement>``), the loads
    (``<task>_<joint>_compression_n``) and whether the study needs review."""
    row: dict[str, Any] = {"study_instance_uid": doc["study_instance_uid"],
                           "needs_review": bool((doc.get("review") or {}).get("needed"))}
    series = doc.get("series", [])
    spine = max(series, key=lambda s: len(s.get("structures", [])), default=None)
    if spine and spine.get("structures"):
        row["sagittal_series"] = spine["description"]
        # Why its level names rest on an assumption (empty: anchored at S1).
        row["sagittal_levels_unverified"] = spine.get("levels_unverified") or ""
        for m in spine["structures"]:
            row.update({f"{m['level']}_{name}": m[name] for name in _STRUCTURE_VALUES})
    axial = max(series, key=lambda s: len(s.get("muscles", [])), default=None)
    if axial and axial.get("muscles"):
        row["axial_series"] = axial["description"]
        for m in axial["muscles"]:
            row.update({f"{m['muscle']}_{m['level']}_{name}": m[name] for name in _MUSCLE_VALUES})
    for t in (doc.get("biomechanics") or {}).get("tasks", []):
        row.update({f"{t['name']}_{joint}_compression_n": v["compression_n"] for joint, v in t.get("joints", {}).items()})
    return row


def write_csvs(out_dir: Path, study_uids: Sequence[str]) -> None:
    """``measurements.csv`` (long) and ``studies.csv`` (wide, failures with
    their reason) from the per-study results under ``out_dir/studies``."""
    long: list[dict[str, Any]] = []
    wide: list[dict[str, Any]] = []
    for uid in study_uids:
        folder = out_dir / "studies" / uid
        if _finished(folder):
            doc = json.loads((folder / "measurements.json").read_text())
            long += long_rows(doc)
            wide.append({"status": "analysed", **wide_row(doc)})
        elif (folder / "failed.json").exists():
            wide.append({"study_instance_uid": uid, "status": "failed",
                         "reason": json.loads((folder / "failed.json").read_text())["reason"]})
    with open(out_dir / "measurements.csv", "w", newline="") as f:
        w = csv.DictWriter(f, LONG_COLUMNS)
        w.writeheader()
        w.writerows(long)
    columns = list(dict.fromkeys(k for r in wide for k in r))
    with open(out_dir / "studies.csv", "w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        w.writerows(wide)
