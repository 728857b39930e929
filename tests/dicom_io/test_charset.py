"""Character sets of the SEG and SR: plain ASCII declares nothing, any
non-ASCII text (our own or copied from the sources, in whatever set the
sources declared) makes the object UTF-8 (ISO_IR 192); every reader then
parses it (dciodvfy, dcmtk's strict SR parser, dcmqi, highdicom)."""
import pydicom
import pytest
from pydicom.dataset import Dataset

from spinegate.biomech.loads import TASKS
from conformance.checks import check_returned_object
from conftest import write_seg_and_sr
from spinegate.dicom_io.charset import CharacterSet, declare_character_set, required_character_set
from spinegate.dicom_io.levels import structure_by_name
from spinegate.dicom_io.measurements import LoadReport, TaskLoadReport
from spinegate.dicom_io.mr_writer import StudyInfo

# (declared by the source, patient name, the set the outputs must declare)
SOURCES = {
    "no_character_set": (None, "PHANTOM^LUMBAR", None),
    "latin1": ("ISO_IR 100", "Müller^Jürgen", "ISO_IR 192"),
    "utf8": ("ISO_IR 192", "Παπαδόπουλος^Γιώργος", "ISO_IR 192"),
    "latin1_ascii_name": ("ISO_IR 100", "SMITH^JOHN", None),
}


def test_ascii_text_needs_no_declaration():
    ds = Dataset()
    ds.PatientName = "DOE^JOHN"
    ds.SeriesDescription = "SAG T2"
    ds.SpecificCharacterSet = "ISO_IR 100"
    assert required_character_set(ds) is CharacterSet.DEFAULT
    assert declare_character_set(ds) is CharacterSet.DEFAULT
    assert "SpecificCharacterSet" not in ds


def test_non_ascii_anywhere_needs_utf8_including_nested_items():
    ds, item = Dataset(), Dataset()
    ds.PatientName = "DOE^JOHN"
    item.TextValue = "60° trunk flexion"
    item.SpecificCharacterSet = "ISO_IR 100"
    ds.ContentSequence = [item]
    assert required_character_set(ds) is CharacterSet.UTF8
    declare_character_set(ds)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert "SpecificCharacterSet" not in ds.ContentSequence[0]  # items inherit the top-level set


def _loads() -> LoadReport:
    """A load report as the biomechanics stage hands it over (values are not
    under test here, the text of every task is)."""
    discs = tuple((structure_by_name(n), 2500.0, 300.0) for n in ("L1L2", "L2L3", "L3L4", "L4L5", "L5S1"))
    bodies = tuple((structure_by_name(n), 2400.0) for n in ("L1", "L2", "L3", "L4", "L5"))
    tasks = tuple(TaskLoadReport(t.name, t.description, discs, bodies) for t in TASKS)
    return LoadReport(1.78, 79.6, "M", tasks, lordosis_deg=40.0, sacral_slope_deg=35.0)


@pytest.fixture(scope="module", params=list(SOURCES), ids=list(SOURCES))
def written(request, tmp_path_factory):
    return _write(request.param, tmp_path_factory.mktemp(request.param))


def _write(case: str, out):
    """SEG and SR (with loads) of a small phantom series whose sources
    declare ``SOURCES[case]``."""
    declared, name, _ = SOURCES[case]
    study = StudyInfo(f"charset-{case}", patient_name=name, character_set=declared)
    written = write_seg_and_sr(out, study, 12, (7, 96, 96, 3.0, 4.0), loads=_loads())
    return case, name, written["seg_path"], written["sr_path"]


def test_outputs_declare_what_their_text_needs_and_keep_the_name(written):
    case, name, seg_path, sr_path = written
    expected = SOURCES[case][2]
    for path in (seg_path, sr_path):
        ds = pydicom.dcmread(path)
        assert ds.get("SpecificCharacterSet") == expected, (case, path.name)
        assert str(ds.PatientName) == name  # decoded from the source's set, re-encoded in ours
        data = path.read_bytes()
        assert name.encode("utf-8" if expected else "ascii") in data
        if case == "latin1":
            assert name.encode("latin-1") not in data


@pytest.mark.integration
def test_every_reader_parses_seg_and_sr(written):
    _, _, seg_path, sr_path = written
    failed = [c for p in (seg_path, sr_path) for c in check_returned_object(p) if not c.passed]
    assert failed == []


@pytest.mark.integration
def test_the_readers_reject_an_sr_with_undeclared_non_ascii_text(tmp_path):
    """What every SR with loads was before: a degree sign written as 0xB0
    with no (0008,0005). The checks must see it, or they prove nothing."""
    _, _, _, sr_path = _write("no_character_set", tmp_path)
    ds = pydicom.dcmread(sr_path)
    groups = next(i for i in ds.ContentSequence if i.ValueType == "CONTAINER" and "ContentSequence" in i
                  and i.ConceptNameCodeSequence[0].CodeValue == "126010")
    tracking = next(i for i in groups.ContentSequence[-1].ContentSequence if i.get("ValueType") == "TEXT")
    tracking.TextValue = tracking.TextValue.replace("deg", "°")
    assert "°" in tracking.TextValue and "SpecificCharacterSet" not in ds
    bad = tmp_path / "bad_sr.dcm"
    ds.save_as(bad, enforce_file_format=True)
    verdicts = {c.name: c.passed for c in check_returned_object(bad)}
    assert verdicts["dciodvfy"] is False
    assert verdicts["dsr2xml (strict)"] is False
    assert verdicts["dcmqi tid1500reader"] is False
