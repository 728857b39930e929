"""The ``spinegate`` command: parses options and calls one entry point each.

Exit codes: 0 success, 2 usage/configuration error, 3 the study could not be
analysed, 4 the model is missing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spinegate.service.config import ConfigError, SpinegateConfig, load_config
from spinegate.service.logging_setup import configure_logging

EXIT_OK, EXIT_CONFIG, EXIT_STUDY_FAILED, EXIT_NO_MODEL = 0, 2, 3, 4


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spinegate", description="DICOM-native lumbar spine MRI analysis service")
    p.add_argument("--config", type=Path, help="YAML configuration file (env SPINEGATE_<SECTION>__<KEY> overrides it)")
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the DICOM SCP and the study worker")
    s.add_argument("--port", type=int, help="listening port (overrides network.port)")
    s.add_argument("--ae-title", help="our AE title (overrides network.ae_title)")
    sub.add_parser("worker", help="process studies from the shared (Redis) queue; no SCP")
    pr = sub.add_parser("process", help="queue a received study now, skipping the quiet period")
    pr.add_argument("study_uid")
    rs = sub.add_parser("resend", help="deliver an undelivered (or exported) study's outputs again, no re-analysis")
    rs.add_argument("study_uid")
    a = sub.add_parser("analyze", help="run the pipeline on DICOM files, no networking")
    a.add_argument("dicom_dir", type=Path)
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--radiomics", action="store_true", help="also IBSI radiomics features (outputs.radiomics)")
    b = sub.add_parser("batch", help="every study under a folder (and in .zip archives) to CSV; resumable")
    b.add_argument("in_dir", type=Path)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--workers", type=int, default=1, help="analysis processes (they share the cores)")
    b.add_argument("--radiomics", action="store_true", help="also IBSI radiomics features (outputs.radiomics)")
    ev = sub.add_parser("evaluate", help="spinegate's SEGs against manual labels (DICOM SEG or NIfTI): overlap, "
                        "surface distances, measurement agreement; CSV, JSON, plots")
    ev.add_argument("auto_dir", type=Path, help="the folder 'analyze' or 'batch' wrote")
    ev.add_argument("manual", type=Path, help="manual labels: a folder or one file (DICOM SEG, .nii, .nii.gz)")
    ev.add_argument("--out", type=Path, required=True)
    ev.add_argument("--labels", type=Path, help="label table (YAML/JSON: value or segment label -> level, e.g. 4: L4)")
    ev.add_argument("--pairs", type=Path, help="CSV with columns manual, series_instance_uid (NIfTI not named by UID)")
    tr = sub.add_parser("train", help="train the sagittal or axial model on your labelled images (needs the [train] "
                                      "extra)")
    tr.add_argument("spec", type=Path, nargs="?", help="training specification (YAML): cases, label table, split, "
                                                         "settings (docs/models.md)")
    tr.add_argument("--out", type=Path, required=True, help="folder for the model, its records and model card")
    tr.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    tr.add_argument("--reproduce-committed", choices=("sagittal", "axial"),
                    help="instead of a spec: train that committed model again from the shared data (--data) as its "
                         "training record says, and compare its validation")
    tr.add_argument("--data", type=Path, help="the shared lumbar_mri (sagittal) or axial_muscle (axial) folder")
    tr.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 ...")
    tr.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    d = sub.add_parser("demo", help="phantom study through a real 'spinegate serve' and back")
    d.add_argument("--work-dir", type=Path)
    d.add_argument("--seed", type=int, default=7)
    lo = sub.add_parser("loads", help="spinal loads (OpenSim) from a measurements.json alone")
    lo.add_argument("measurements", type=Path, help="measurements.json written by analyze/serve")
    lo.add_argument("--out", type=Path, help="folder for loads.json and the OpenSim files "
                    "(default: biomech/ beside the measurements)")
    lo.add_argument("--height-m", type=float, help="stature, overrides the recorded one")
    lo.add_argument("--weight-kg", type=float, help="body mass, overrides the recorded one")
    lo.add_argument("--sex", choices=("M", "F"), help="overrides the recorded one")
    ph = sub.add_parser("phantom", help="write the synthetic sagittal phantom study as DICOM")
    ph.add_argument("out_dir", type=Path)
    ph.add_argument("--seed", type=int, default=7)
    ph.add_argument("--labels", action="store_true", help="also its exact labels as NIfTI (for 'evaluate')")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    overrides = {}
    if args.command == "serve":
        overrides["network"] = {"port": args.port, "ae_title": args.ae_title}
    if getattr(args, "radiomics", False):
        overrides["outputs"] = {"radiomics": True}
    try:
        config = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"spinegate: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command in ("serve", "worker"):
        from spinegate.inference.engine import EngineError
        from spinegate.service.app import run, run_worker

        if args.command == "worker" and config.queue.backend == "sqlite":
            print("spinegate: 'worker' needs a shared queue: set queue.backend to redis", file=sys.stderr)
            return EXIT_CONFIG
        try:
            return (run if args.command == "serve" else run_worker)(config)
        except EngineError as e:
            print(f"spinegate: {e}", file=sys.stderr)
            return EXIT_NO_MODEL
    if args.command in ("process", "resend"):
        return _queue_study(config, args.command, args.study_uid)
    if args.command == "analyze":
        return _analyze(config, args.dicom_dir, args.out)
    if args.command == "batch":
        return _batch(config, args)
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "train":
        return _train(args)
    if args.command == "loads":
        return _loads(args)
    if args.command == "demo":
        from spinegate.service.demo import run_demo

        return run_demo(args.work_dir, args.seed)
    if args.command == "phantom":
        from spinegate.dicom_io.phantom.study import write_phantom_study

        truth = write_phantom_study(args.out_dir, seed=args.seed, labels=args.labels)
        (args.out_dir / "truth.json").write_text(json.dumps(truth["structures"], indent=1))
        labels = " and labels/ (NIfTI + labels.yaml)" if args.labels else ""
        print(f"wrote {len(truth['files'])} files, truth.json{labels} to {args.out_dir}")
        return EXIT_OK
    return EXIT_CONFIG


def _queue_study(config: SpinegateConfig, command: str, study_uid: str) -> int:
    """``process`` (analyse again) or ``resend`` (deliver again) one study
    through the running service's queue."""
    from spinegate.service.worker import build_worker

    store, worker = build_worker(config)
    queued = (worker.request_processing if command == "process" else worker.request_resend)(study_uid)
    if not queued:
        rec = store.study(study_uid)
        state = rec.state.value if rec else "unknown"
        why = " or its outputs are missing" if command == "resend" and rec else ""
        print(f"spinegate: study {study_uid} cannot be queued for {command} (state: {state}{why})", file=sys.stderr)
        return EXIT_STUDY_FAILED
    print(f"queued {study_uid} ({command})")
    return EXIT_OK


def _analyze(config: SpinegateConfig, dicom_dir: Path, out: Path) -> int:
    from spinegate.inference.engine import EngineError
    from spinegate.service.engines import Engines
    from spinegate.service.pipeline import StudyFailed, analyze_study, structure_table

    paths = sorted(p for p in dicom_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    engines = Engines(config.inference.model_dir, config.inference.threads,
                      axial_precision=config.inference.axial_precision, backend=config.inference.backend)
    try:
        for rule in config.routing:
            engines.model_info(rule.engine)
    except EngineError as e:
        print(f"spinegate: {e}", file=sys.stderr)
        return EXIT_NO_MODEL
    try:
        result = analyze_study(paths, engines, config.routing, out, config.biomechanics.enabled, outputs=config.outputs)
    except StudyFailed as e:
        print(f"spinegate: study not analysed: {e.reason}: {e}", file=sys.stderr)
        return EXIT_STUDY_FAILED
    except EngineError as e:  # e.g. a named CUDA backend on a machine without one
        print(f"spinegate: {e}", file=sys.stderr)
        return EXIT_NO_MODEL
    print(structure_table(json.loads(result.measurements_path.read_text())))
    print(f"\nwrote {', '.join(p.name for p in result.outputs)} and measurements.json to {out}")
    return EXIT_OK


def _batch(config: SpinegateConfig, args: argparse.Namespace) -> int:
    from spinegate.inference.engine import EngineError
    from spinegate.service.batch import run_batch

    if args.workers < 1:
        print(f"spinegate: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return EXIT_CONFIG
    if not args.in_dir.is_dir():
        print(f"spinegate: {args.in_dir} is not a folder", file=sys.stderr)
        return EXIT_CONFIG
    try:
        summary = run_batch(args.in_dir, args.out, config, args.workers, progress=sys.stderr.isatty())
    except EngineError as e:
        print(f"spinegate: {e}", file=sys.stderr)
        return EXIT_NO_MODEL
    print(f"{summary.found} studies: {summary.analysed} analysed, {summary.skipped} already finished, "
          f"{len(summary.failed)} failed, {summary.unreadable} files not DICOM")
    for uid, reason in summary.failed.items():
        print(f"  failed {uid}: {reason}")
    print(f"wrote {args.out / 'measurements.csv'} and {args.out / 'studies.csv'}")
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    from spinegate.service.evaluate import LabelFileError, run_evaluation

    for path in (args.auto_dir, args.manual):
        if not path.exists():
            print(f"spinegate: {path} does not exist", file=sys.stderr)
            return EXIT_CONFIG
    try:
        summary = run_evaluation(args.auto_dir, args.manual, args.out, args.labels, args.pairs)
    except LabelFileError as e:  # EvaluationError included
        print(f"spinegate: cannot evaluate: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{len(summary['pairs'])} label files compared")
    for kind, block in summary["overlap"].items():
        s = block["all"]
        print(f"  {kind:20s} n={s['n']:3d} missed={s['missed']} Dice {s['dice']['mean']} "
              f"mean surface distance {s['mean_surface_distance_mm']['mean']} mm HD95 {s['hd95_mm']['mean']} mm")
    for kind, by_name in summary["measurements"].items():
        for name, block in by_name.items():
            a = block["all"]
            print(f"  {kind:20s} {name:11s} n={a['n']:3d} MAE {a['mae']} {a['unit']} bias {a['bias']} "
                  f"limits {a['limits_of_agreement']} ICC(2,1) {a['icc_2_1']} r {a['pearson_r']}")
    for line in summary["unpaired"]:
        print(f"  not compared: {line}")
    print(f"wrote overlap.csv, measurements.csv, summary.json, dice_per_level.png, bland_altman.png to {args.out}")
    return EXIT_OK


def _train(args: argparse.Namespace) -> int:
    try:
        from spinegate.inference.training.site_data import SpecError, read_spec
        from spinegate.inference.training.site_train import train_site
    except ImportError as e:  # torch is an extra
        print(f"spinegate: training needs the [train] extra (pip install 'spinegate[train]'): {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.reproduce_committed:
        return _reproduce(args)
    if args.spec is None:
        print("spinegate: give a training specification (or --reproduce-committed --data DIR)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        spec = read_spec(args.spec)
        record = train_site(spec, args.out, resume=args.resume, device=args.device, threads=args.threads,
                            progress=sys.stderr.isatty())
    except (SpecError, ValueError) as e:
        print(f"spinegate: cannot train: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"trained {record['iterations']} iterations in {record['seconds']:.0f} s on "
          f"{len(record['split']['training'])} cases; validated on {', '.join(record['split']['validation_subjects'])}")
    print(f"wrote {args.out}/{record['model']}.onnx, its training and validation records and MODEL_CARD.md "
          f"(use it with inference.model_dir: {args.out}"
          + (", inference.axial_precision: fp32)" if record["engine"] == "axial" and not record["calibrated"] else ")"))
    return EXIT_OK


def _reproduce(args: argparse.Namespace) -> int:
    from spinegate.inference.training.reproduce import reproduce_committed, reproduce_committed_axial

    if args.spec is not None or args.data is None or not args.data.is_dir():
        print("spinegate: --reproduce-committed takes no specification and needs --data, the shared lumbar_mri "
              "(sagittal) or axial_muscle (axial) folder", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.reproduce_committed == "axial":
            result = reproduce_committed_axial(args.data, args.out, args.threads)
        else:
            result = reproduce_committed(args.data, args.out, args.device, args.threads)
    except ValueError as e:
        print(f"spinegate: cannot reproduce: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print("; ".join(f"{k} {v}" for k, v in result.items() if not isinstance(v, (dict, list)))
          + f"; wrote {args.out}/reproduction.json")
    return EXIT_OK


def _loads(args: argparse.Namespace) -> int:
    from spinegate.service.biomech_stage import centroids_from_document, loads_table, run_stage, subject_from_document

    try:
        doc = json.loads(args.measurements.read_text())
    except (OSError, ValueError) as e:
        print(f"spinegate: cannot read {args.measurements}: {e}", file=sys.stderr)
        return EXIT_CONFIG
    subject = subject_from_document(doc, args.height_m, args.weight_kg, args.sex)
    for given, flag in ((args.height_m, "default_height_used"), (args.weight_kg, "default_weight_used")):
        if given is not None and flag in subject.defaults_used:
            print(f"spinegate: implausible value {given} (height 1.0-2.5 m, weight 25-250 kg)", file=sys.stderr)
            return EXIT_CONFIG
    out = args.out or args.measurements.parent / "biomech"
    centroids, distrusted = centroids_from_document(doc)
    result = run_stage(centroids, subject, out, distrusted=distrusted)
    block = result.document()
    (out / "loads.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "loads.json").write_text(json.dumps(block, indent=1))
    print(loads_table(block))
    print(f"\nwrote loads.json and the OpenSim models and results to {out}")
    return EXIT_STUDY_FAILED if result.error else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
