"""``spinegate train``: site data as scanners and label tools write it,
partial labels, checkpoints, the trained folder in use, and the committed
model's recipe (needs the train extra)."""
import json
import shlex
from dataclasses import fields
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.sr.codedict import codes

from conftest import MODEL_DIR, require_shared_data

torch = pytest.importorskip("torch", reason="torch is the training extra: pip install '.[train]'")

from spinegate.dicom_io.label_files import read_label_table, read_nifti_labels, structure_named  # noqa: E402
from spinegate.dicom_io.phantom.study import write_axial_phantom_study, write_phantom_study  # noqa: E402
from spinegate.dicom_io.volume import read_series  # noqa: E402
from spinegate.inference.training.reproduce import committed_record, reproduce_committed, stage_configs  # noqa: E402
from spinegate.dicom_io.labelled_images import labels_on_image_grid  # noqa: E402
from spinegate.inference.training.site_data import (SiteCase, SpecError, axial_class,  # noqa: E402
                                                    load_axial_site_case, load_site_case, read_spec,
                                                    split_by_subject)
from spinegate.inference.training.train_axial import ALL_BITS as AXIAL_ALL_BITS  # noqa: E402
from spinegate.inference.training.site_train import one_cycle, train_site  # noqa: E402
from spinegate.inference.training.train import SagittalTrainingConfig, _parser  # noqa: E402
from spinegate.inference.training.training_data import BG, DISC, S1, VB, allowed_all, training_stems  # noqa: E402
from spinegate.service.cli import main  # noqa: E402

pytestmark = pytest.mark.heavy(seconds=140)


def _t2_series(folder: Path, series_uid: str) -> list[pydicom.Dataset]:
    datasets = (pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm")))
    return [ds for ds in datasets if ds.SeriesInstanceUID == series_uid]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Three phantom subjects as a site would bring them: the T2 series as
    DICOM and as a NIfTI image (SimpleITK, its own axis order), the labels
    as NIfTI (another axis order) with a label table."""
    root = tmp_path_factory.mktemp("site")
    subjects = {}
    for seed in (1, 2, 3):
        folder = root / f"p{seed}"
        truth = write_phantom_study(folder, seed=seed, labels=True)
        labels = Path(truth["label_image"])
        uid = labels.name.removesuffix(".nii.gz")
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        sitk.WriteImage(reader.Execute(), str(folder / "image.nii.gz"))
        subjects[f"s{seed}"] = {"dicom": folder, "image": folder / "image.nii.gz", "labels": labels,
                                "table": labels.parent / "labels.yaml", "uid": uid}
    return subjects


def _spec(path: Path, site, **settings) -> Path:
    cases = [{"subject": s, "image": str(v["image"]), "labels": str(v["labels"])} for s, v in site.items()]
    spec = {"cases": cases, "label_table": str(site["s1"]["table"]), "validation_subjects": ["s3"], "iterations": 4,
            "batch": 2, "phantoms": 0, "phantom_share": 0, "checkpoint_every": 100, **settings}
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def test_a_specification_names_what_is_wrong(tmp_path, site):
    bad = {
        "cases": "at least 2",
        "validation_subjects": "have no case",
        "image": "give 'image' and 'labels'",
    }
    one = [{"subject": "a", "image": "a.nii", "labels": "a_l.nii"}, {"subject": "a", "image": "b.nii",
                                                                      "labels": "b_l.nii"}]
    (tmp_path / "s1.yaml").write_text(json.dumps({"cases": one[:1]}))
    (tmp_path / "s2.yaml").write_text(json.dumps({"cases": one, "validation_subjects": ["zz"]}))
    (tmp_path / "s3.yaml").write_text(json.dumps({"cases": [{"subject": "a", "image": "a.nii", "seg": "x.dcm"}] * 2}))
    for name, expected in zip(("s1", "s2", "s3"), bad.values()):
        with pytest.raises(SpecError, match=expected):
            read_spec(tmp_path / f"{name}.yaml")
    (tmp_path / "s4.yaml").write_text(json.dumps({"cases": one}))
    with pytest.raises(SpecError, match="at least two subjects"):
        read_spec(tmp_path / "s4.yaml")
    (tmp_path / "s5.yaml").write_text("cases: [")
    with pytest.raises(SpecError, match="cannot read"):
        read_spec(tmp_path / "s5.yaml")
    with pytest.raises(SpecError, match=r"1 file\(s\) of the specification do not exist: .*mine/model.onnx"):
        read_spec(_spec(tmp_path / "ok.yaml", site, init="mine/model.onnx"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "model.onnx").write_bytes(b"")
    spec = read_spec(_spec(tmp_path / "ok.yaml", site, init="mine/model.onnx"))
    assert spec.init == str(tmp_path / "mine" / "model.onnx")


def test_the_split_keeps_every_subject_on_one_side(tmp_path, site):
    cases = [{"subject": f"s{i // 2}", "image": f"{i}.nii", "labels": f"{i}_l.nii"} for i in range(10)]
    for i in range(10):
        (tmp_path / f"{i}.nii").write_bytes(b"")
        (tmp_path / f"{i}_l.nii").write_bytes(b"")
    (tmp_path / "s.yaml").write_text(json.dumps({"cases": cases, "validation_fraction": 0.4, "seed": 3}))
    training, validation = split_by_subject(read_spec(tmp_path / "s.yaml"))
    held = {c.subject for c in validation}
    assert len(held) == 2 and not held & {c.subject for c in training} and len(training) + len(validation) == 10


def test_nifti_labels_in_another_axis_order_are_read_on_the_image_and_shifted_ones_refused(tmp_path, site):
    s = site["s1"]
    table = read_label_table(s["table"])
    case, volume, labels = load_site_case(SiteCase(subject="s1", image=s["image"], labels=s["labels"]), table)
    truth = read_nifti_labels(s["labels"], table)
    image_order = np.squeeze(hd.Volume.from_simpleitk(sitk.ReadImage(str(s["image"]))).array).shape
    assert image_order != truth.shape  # SimpleITK wrote the image columns first, the phantom its labels slices first
    assert labels.shape == volume.array.shape == truth.shape  # the case's volume: slices first
    for name, mask in truth.masks.items():  # the same voxels, found where they are in the patient
        assert labels.masks[name].sum() == mask.sum()

        def centre_mm(m, affine):
            return (affine @ np.append(np.argwhere(m).mean(axis=0), 1.0))[:3]

        np.testing.assert_allclose(centre_mm(labels.masks[name], volume.affine), centre_mm(mask, truth.affine),
                                   atol=1e-3)
    assert (case.allowed == VB).any() and (case.allowed == DISC).any() and (case.allowed == S1).any()
    shifted = sitk.ReadImage(str(s["labels"]))
    shifted.SetOrigin(tuple(np.array(shifted.GetOrigin()) + np.array(shifted.GetDirection()).reshape(3, 3)[:, 1]
                            * shifted.GetSpacing()[1] * 3))
    sitk.WriteImage(shifted, str(tmp_path / "shifted.nii.gz"))
    with pytest.raises(SpecError, match="not on the grid"):
        load_site_case(SiteCase(subject="s1", image=s["image"], labels=tmp_path / "shifted.nii.gz"), table)


def _manual_seg(site_subject, path: Path, table) -> None:
    """A reader's SEG of the T2 series (MANUAL, segments named by level)."""
    datasets = _t2_series(site_subject["dicom"], site_subject["uid"])
    volume = read_series(datasets)
    truth = read_nifti_labels(site_subject["labels"], table)
    masks = labels_on_image_grid(truth, volume.affine, volume.array.shape)
    names = sorted(masks)
    frames = np.zeros((len(datasets),) + volume.array.shape[1:] + (len(names),), np.uint8)
    by_uid = {ds.SOPInstanceUID: i for i, ds in enumerate(datasets)}
    for k, ref in enumerate(volume.slice_refs):
        for j, n in enumerate(names):
            frames[by_uid[ref.sop_instance_uid], ..., j] = masks[n][k]
    descriptions = [hd.seg.SegmentDescription(
        segment_number=j + 1, segment_label=n, segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for j, n in enumerate(names)]
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=99, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="reader", manufacturer_model_name="hand", software_versions="1",
        device_serial_number="1")
    seg.save_as(path)


def test_a_dicom_series_with_a_readers_seg_teaches_what_its_nifti_twin_teaches(tmp_path, site):
    s = site["s2"]
    table = read_label_table(s["table"])
    seg_path = tmp_path / "manual_seg.dcm"
    _manual_seg(s, seg_path, table)
    from_nifti, _, _ = load_site_case(SiteCase(subject="s2", image=s["image"], labels=s["labels"]), table)
    from_dicom, _, labels = load_site_case(SiteCase(subject="s2", dicom=s["dicom"], seg=seg_path))
    assert set(labels.masks) >= {"L3", "L3L4", "S1"}
    np.testing.assert_array_equal(from_dicom.allowed, from_nifti.allowed)
    np.testing.assert_allclose(from_dicom.image, from_nifti.image, atol=1e-5)
    with pytest.raises(SpecError, match="no instance of the series"):
        load_site_case(SiteCase(subject="s2", dicom=site["s3"]["dicom"], seg=seg_path))


def test_a_study_folder_with_nifti_labels_on_one_of_its_series(tmp_path, site):
    """Labels saved over the DICOM series (ITK-SNAP, 3D Slicer): the series
    is the one whose grid they are on, named by the file or the spec when
    several series share it (the phantom's T1 and T2 do)."""
    s = site["s2"]
    table = read_label_table(s["table"])
    from_nifti, _, _ = load_site_case(SiteCase(subject="s2", image=s["image"], labels=s["labels"]), table)
    by_file_name, volume, _ = load_site_case(SiteCase(subject="s2", dicom=s["dicom"], labels=s["labels"]), table)
    assert volume.series_instance_uid == s["uid"]
    np.testing.assert_array_equal(by_file_name.allowed, from_nifti.allowed)
    outlines = tmp_path / "outlines.nii.gz"
    outlines.write_bytes(s["labels"].read_bytes())
    with pytest.raises(SpecError, match="fits 2 series .* name one with series_instance_uid"):
        load_site_case(SiteCase(subject="s2", dicom=s["dicom"], labels=outlines), table)
    named, _, _ = load_site_case(SiteCase(subject="s2", dicom=s["dicom"], labels=outlines,
                                          series_instance_uid=s["uid"]), table)
    np.testing.assert_array_equal(named.allowed, from_nifti.allowed)
    with pytest.raises(SpecError, match="no DICOM series"):
        load_site_case(SiteCase(subject="s2", dicom=s["labels"].parent, labels=outlines), table)
    shifted = sitk.ReadImage(str(outlines))
    shifted.SetOrigin(tuple(np.array(shifted.GetOrigin()) + 2.0))
    sitk.WriteImage(shifted, str(outlines))
    with pytest.raises(SpecError, match="outlines.nii.gz is on the grid of no series in"):
        load_site_case(SiteCase(subject="s2", dicom=s["dicom"], labels=outlines), table)


def _partial_labels(labels: Path, slices: list[int], values: dict[int, int], out: Path) -> None:
    """A reader's partial tracing: of a phantom's exact label image, only
    ``values`` (renumbered) on ``slices`` of its stack (its shortest axis)."""
    full = sitk.ReadImage(str(labels))
    array = sitk.GetArrayFromImage(full)
    stack_axis = int(np.argmin(array.shape))
    partial = np.zeros_like(array, dtype=np.uint8)
    for k in slices:
        index = [slice(None)] * 3
        index[stack_axis] = k
        for old, new in values.items():
            partial[tuple(index)][array[tuple(index)] == old] = new
    assert partial.any()
    image = sitk.GetImageFromArray(partial)
    image.CopyInformation(full)
    sitk.WriteImage(image, str(out))


def test_partial_labels_rule_out_a_class_only_where_it_is_labelled(tmp_path, site):
    """One disc traced on one plane: that plane's disc rows say "not a disc"
    outside the traces; other planes and other classes stay open."""
    s = site["s1"]
    _partial_labels(s["labels"], [7], {27: 1}, tmp_path / "disc_mid.nii.gz")  # L4L5 in the phantom's table
    (tmp_path / "table.yaml").write_text("1: L4-L5\n")
    case, _, _ = load_site_case(SiteCase(subject="s1", image=s["image"], labels=tmp_path / "disc_mid.nii.gz"),
                                read_label_table(tmp_path / "table.yaml"))
    labelled_planes = np.flatnonzero((case.allowed == DISC).any(axis=(1, 2)))
    assert labelled_planes.size >= 1
    plane = case.allowed[labelled_planes[0]]
    rows = np.flatnonzero((plane == DISC).any(axis=1))
    band = plane[rows.min(): rows.max() + 1]
    outside = band[band != DISC]
    assert outside.size and (outside == (allowed_all & ~DISC)).all()
    assert (plane[: rows.min()] == allowed_all).all() and (plane[rows.max() + 1:] == allowed_all).all()
    others = np.setdiff1d(np.arange(case.allowed.shape[0]), labelled_planes)
    assert (case.allowed[others] == allowed_all).all()
    assert BG & (allowed_all & ~DISC)


@pytest.mark.parametrize("iterations", [1, 2, 3, 4, 5, 19, 20, 21, 39, 40, 41, 100, 2000])
def test_the_schedule_runs_for_any_number_of_iterations(iterations):
    weight = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([weight], lr=1e-3)
    schedule = one_cycle(opt, 1e-3, iterations)
    rates = []
    for i in range(iterations):  # the run's steps: the schedule steps after each but the last
        opt.step()
        rates.append(opt.param_groups[0]["lr"])
        if i < iterations - 1:
            schedule.step()
    assert max(rates) <= 1e-3 + 1e-12 and all(np.isfinite(rates))


def _initializers(path: Path) -> bytes:
    import onnx

    return b"".join(t.raw_data for t in onnx.load(str(path)).graph.initializer)


def test_a_run_stopped_and_resumed_ends_with_the_weights_of_one_uninterrupted(tmp_path, site):
    spec = read_spec(_spec(tmp_path / "spec.yaml", site))
    # One thread: with two, the weights once differed in their last bit under
    # parallel test workers (never alone); one thread leaves no split of a
    # reduction to chance, and the resume is what is tested.
    train_site(spec, tmp_path / "whole", threads=1)
    assert train_site(spec, tmp_path / "parts", stop_after=2, threads=1) == {"stopped_at": 2}
    assert not (tmp_path / "parts" / "sagittal_spine.onnx").exists()
    record = train_site(spec, tmp_path / "parts", resume=True, threads=1)
    assert record["iterations"] == 4 and len(record["loss_every_50"]) == 1
    assert _initializers(tmp_path / "whole" / "sagittal_spine.onnx") == \
        _initializers(tmp_path / "parts" / "sagittal_spine.onnx")
    other = read_spec(_spec(tmp_path / "other.yaml", site, seed=5))
    with pytest.raises(ValueError, match="other settings"):
        train_site(other, tmp_path / "parts", resume=True)


def test_spinegate_train_writes_a_model_folder_the_pipeline_uses(tmp_path, site, capsys):
    spec = _spec(tmp_path / "spec.yaml", site)
    out = tmp_path / "model"
    assert main(["train", str(spec), "--out", str(out)]) == 0
    assert "validated on s3" in capsys.readouterr().out
    card = (out / "MODEL_CARD.md").read_text()
    validation = json.loads((out / "sagittal_spine.validation.json").read_text())
    assert "Validation (held out by subject): 1 case of 1 subject: s3" in card
    assert "| mean Dice | before training |" in card and "before_training" in validation
    assert {"vertebral body", "intervertebral disc"} <= set(validation["per_kind"])
    for kind in validation["per_kind"].values():  # fine-tuned 4 steps from the committed model
        assert kind["mean_dice"] > 0.8
    assert f"| L4 vertebral body | 1 | {validation['per_structure']['L4 vertebral body']['mean_dice']:.3f} |" in card
    record = json.loads((out / "sagittal_spine.training.json").read_text())
    assert record["split"]["validation_subjects"] == ["s3"] and record["context_slices_each_side"] == 1
    (tmp_path / "config.yaml").write_text(f"inference:\n  model_dir: {out}\n")
    assert main(["--config", str(tmp_path / "config.yaml"), "analyze", str(site["s3"]["dicom"]),
                 "--out", str(tmp_path / "analysis")]) == 0
    measured = json.loads((tmp_path / "analysis" / "measurements.json").read_text())
    assert measured["model"]["version"] == f"site-seed{record['seed']}"


def test_spinegate_train_refuses_clearly(tmp_path, site, capsys):
    (tmp_path / "bad.yaml").write_text(json.dumps({"cases": []}))
    assert main(["train", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "cannot train: cases" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "o")]) == 2
    assert "give a training specification" in capsys.readouterr().err
    spec = _spec(tmp_path / "spec.yaml", site, init=str(tmp_path / "missing.onnx"))
    assert main(["train", str(spec), "--out", str(tmp_path / "o")]) == 2
    assert "do not exist: " + str(tmp_path / "missing.onnx") in capsys.readouterr().err
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    spec = _spec(tmp_path / "spec.yaml", site, init=str(tmp_path / "broken.onnx"))
    assert main(["train", str(spec), "--out", str(tmp_path / "o")]) == 2
    assert "init: " in capsys.readouterr().err
    assert main(["train", "--reproduce-committed", "sagittal", "--data", str(tmp_path), "--out",
                 str(tmp_path / "r")]) == 2
    assert "cannot reproduce: " in capsys.readouterr().err
    assert main(["train", "--reproduce-committed", "axial", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "not the shared axial_muscle folder" in capsys.readouterr().err
    assert main(["train", "--reproduce-committed", "sagittal", "--out", str(tmp_path / "r")]) == 2
    assert "needs --data" in capsys.readouterr().err


def test_the_committed_recipe_is_the_recorded_commands():
    """Each stage rebuilt from the training record equals the configuration
    its recorded command line gives (up to the folders, the device and the
    threads, which the reproduction chooses, and the export, which only the
    last stage makes); a stage that read the shared data reads it again,
    the others the packed cases."""
    record = committed_record()
    names = sorted(k for k in record if k.startswith("stage_"))
    configs = stage_configs(record, Path("data"), Path("cases.xz"), Path("out"), "cuda")
    assert len(configs) == len(names) >= 2
    for name, config in zip(names, configs):
        argv = shlex.split(record[name]["command"])
        first = min(argv.index(a) for a in ("--cases", "--data") if a in argv)
        recorded = SagittalTrainingConfig.from_arguments(_parser().parse_args(["fit"] + argv[first:]))
        for f in fields(SagittalTrainingConfig):
            if f.name in ("out", "init", "data", "cases", "device", "threads", "export_onnx"):
                continue
            expected = getattr(recorded, f.name)
            if f.name == "channels" and expected is None:
                expected = tuple(record[name]["channels"])
            assert getattr(config, f.name) == expected, (name, f.name)
        from_data = recorded.data is not None
        assert (config.data, config.cases) == ((Path("data"), None) if from_data else (None, Path("cases.xz"))), name
        assert config.device == "cuda"
    assert configs[0].init is None
    assert all(later.init == earlier.out / "sagittal_spine.pt" for earlier, later in zip(configs, configs[1:]))
    assert not any(c.export_onnx for c in configs[:-1]) and configs[-1].export_onnx and configs[-1].out == Path("out")
    assert record["stage_g3"]["disc_rim"] == "source-size" and configs[-1].disc_rim == "source-size"
    assert record["stage_g5"]["nearest_slice_labels"] == ["VB3"] and configs[-1].nearest_slice_labels == ("VB3",)
    assert all(c.nearest_slice_labels == () for c in configs[:-1])


def test_reproduction_refuses_data_that_is_not_the_records(tmp_path):
    with pytest.raises(ValueError, match="not the shared lumbar_mri folder"):
        reproduce_committed(tmp_path, tmp_path / "out", "cpu")
    (tmp_path / "manifest.csv").write_text("stem,dataset\nVB3_01,VB3\nVB9_01,VB9\n")
    with pytest.raises(ValueError, match=r"other training volumes .*missing \['IVD_11'.*extra \['VB9_01'\]"):
        reproduce_committed(tmp_path, tmp_path / "out", "cpu")
    assert not (tmp_path / "out").exists()


@pytest.mark.shared_data
def test_the_shared_data_holds_the_records_training_volumes():
    """What --reproduce-committed checks before it trains: the manifest's
    training volumes are those the committed model was trained on."""
    data = require_shared_data()
    record = committed_record()
    for name in (k for k in record if k.startswith("stage_")):
        assert training_stems(data) == record[name]["training_volumes"]


@pytest.fixture(scope="module")
def axial_site(tmp_path_factory):
    """Three axial phantom subjects (T2 only, 1 mm pixels) with their exact
    labels saved over the series as NIfTI."""
    root = tmp_path_factory.mktemp("axial_site")
    subjects = {}
    for seed in (1, 2, 3):
        folder = root / f"a{seed}"
        truth = write_axial_phantom_study(folder, seed=seed, sagittal=False, labels=True, axial_weightings=("T2",),
                                          rows=200, columns=200, pixel_spacing_mm=1.0)
        labels = Path(truth["axial_label_image"])
        subjects[f"a{seed}"] = {"dicom": folder, "labels": labels, "table": labels.parent / "labels.yaml"}
    return subjects


def test_axial_labels_rule_out_the_traced_muscles_on_traced_slices_only(tmp_path, axial_site):
    """Multifidus traced on two slices (as a reader might): there the pixels
    outside the traces may be anything but multifidus; untraced slices are
    not trained on."""
    s = axial_site["a1"]
    _partial_labels(s["labels"], [4, 6], {41: 1, 42: 2}, tmp_path / "mf.nii.gz")
    (tmp_path / "table.yaml").write_text("1: MF_R\n2: MF_L\n")
    case, volume, labels = load_axial_site_case(SiteCase(subject="a1", dicom=s["dicom"], labels=tmp_path / "mf.nii.gz"),
                                                read_label_table(tmp_path / "table.yaml"))
    assert set(labels.masks) == {"MF_R", "MF_L"} and case.image.shape[0] == 2
    mf_r, mf_l = 1 << axial_class(structure_named("MF_R")), 1 << axial_class(structure_named("MF_L"))
    assert (case.allowed == mf_r).any() and (case.allowed == mf_l).any()
    open_pixels = case.allowed[(case.allowed != mf_r) & (case.allowed != mf_l)]
    assert (open_pixels == AXIAL_ALL_BITS & ~(mf_r | mf_l)).all()
    with pytest.raises(SpecError, match=r"sag_image.nii.gz: its slices \(4.0 mm apart\) are not axial"):
        load_axial_site_case(SiteCase(subject="s1", image=_sagittal_image(tmp_path), labels=tmp_path / "sag.nii.gz"),
                             read_label_table(tmp_path / "table.yaml"))


def _sagittal_image(tmp_path: Path) -> Path:
    """A small sagittal NIfTI image with one label, to give the axial loader."""
    image = sitk.Image(8, 32, 32, sitk.sitkFloat32)
    image.SetDirection((1, 0, 0, 0, 0, -1, 0, -1, 0))  # index axes: left-right, foot-head, anterior-posterior
    image.SetSpacing((4.0, 1.0, 1.0))
    labels = sitk.Image(8, 32, 32, sitk.sitkUInt8)
    labels.CopyInformation(image)
    labels[2:4, 10:12, 10:12] = 1
    sitk.WriteImage(image, str(tmp_path / "sag_image.nii.gz"))
    sitk.WriteImage(labels, str(tmp_path / "sag.nii.gz"))
    return tmp_path / "sag_image.nii.gz"


def test_spinegate_train_axial_writes_a_muscle_model_the_pipeline_uses(tmp_path, axial_site, capsys):
    cases = [{"subject": k, "dicom": str(v["dicom"]), "labels": str(v["labels"])} for k, v in axial_site.items()]
    spec = {"engine": "axial", "cases": cases, "label_table": str(axial_site["a1"]["table"]),
            "validation_subjects": ["a3"], "iterations": 3, "batch": 2, "phantoms": 0, "phantom_share": 0,
            "calibrate": False}
    (tmp_path / "spec.yaml").write_text(json.dumps(spec))
    out = tmp_path / "model"
    assert main(["train", str(tmp_path / "spec.yaml"), "--out", str(out)]) == 0
    assert "axial_muscle.onnx" in capsys.readouterr().out
    card = (out / "MODEL_CARD.md").read_text()
    validation = json.loads((out / "axial_muscle.validation.json").read_text())
    assert card.startswith("# Model card: axial_muscle (site-trained)") and "no area calibration" in card
    assert {"muscle", "vertebral body", "intervertebral disc"} <= set(validation["per_kind"])
    assert validation["per_structure"]["Left multifidus"]["mean_dice"] > 0.8  # 3 steps from the committed model
    # bodies and discs are one class each to the axial network, whatever their level
    assert {"vertebral body", "intervertebral disc"} <= set(validation["per_structure"])
    assert not any(k.startswith("L3") for k in validation["per_structure"])
    assert validation["per_structure"]["vertebral body"]["mean_dice"] > 0.8
    assert "before_training" in validation
    assert (out / "sagittal_spine.onnx").read_bytes() == (MODEL_DIR / "sagittal_spine.onnx").read_bytes()
    (tmp_path / "config.yaml").write_text(f"inference:\n  model_dir: {out}\n  axial_precision: fp32\n")
    assert main(["--config", str(tmp_path / "config.yaml"), "analyze", str(axial_site["a3"]["dicom"]),
                 "--out", str(tmp_path / "analysis")]) == 0
    measured = json.loads((tmp_path / "analysis" / "measurements.json").read_text())
    assert {"name": "axial_muscle", "version": "site-seed20261121"}.items() <= \
        next(m for m in measured["models"] if m["name"] == "axial_muscle").items()
