"""Crash harness: phantom studies streamed into a real ``spinegate serve``
that is killed with SIGKILL at random moments and restarted.

A sender thread sends the studies one after another with dcmtk's storescu,
as a scanner or PACS would: a send that a kill breaks is sent again, whole,
once spinegate answers C-ECHO again. Meanwhile the killer takes the next
moment to aim at in turn (receive, assembly, segmentation, report writing,
export), waits until the service is there (a send in flight; the state
store; the service's log), waits a random fraction of a second more, kills
with SIGKILL, notes what was going on, and starts the service again. Afterwards every study whose instances
were all acknowledged must have exactly one set of outputs at the PACS
(dcmtk's storescp): one SEG per series and one SR, each SOP Instance once — 0 lost,
0 duplicated — and the killed processes must leave no child behind.

Used by ``tests/integration/test_crash_safety.py`` (CI) and
``bench/crash_soak.py`` (≥ 100 studies).
"""
from __future__ import annotations

import collections
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import yaml

from conformance.pacs import StoreSCP, storescu_statuses
from spinegate.dicom_io.phantom.study import StudyInfo, write_phantom_study
from spinegate.service.demo import free_port, wait_for_echo
from spinegate.service.store import StateStore, StudyState

__all__ = ["CrashReport", "run_crash_harness", "write_studies"]

REPO = Path(__file__).resolve().parent.parent


@dataclass
class CrashReport:
    """What a harness run saw.

    Attributes
    ----------
    studies : int
        Studies whose instances were all acknowledged.
    kills : int
        SIGKILLs sent to ``spinegate serve``.
    kill_phases : Counter
        Kills by what was going on at the moment: ``receive`` (a send in
        flight), ``assembly`` (studies waiting for their quiet period or the
        queue), ``segmentation``, ``report_writing`` (SEG and SR),
        ``export`` (delivery), ``idle``; one kill can count in several.
    resent : int
        Sends a kill broke and the sender repeated.
    lost, duplicated : list of str
        Study UIDs with no complete set at the PACS, or more than one.
    orphans : int
        Children of a killed process still alive 10 s after the kill.
    pacs_outages : int
        Times the PACS was stopped (before each kill aimed at delivery) and
        started again after the restart.
    aims : list of dict
        Per kill: the phase it was aimed at, the phases seen when it fell,
        the seconds spent waiting for the aim and the studies by state then
        (what to read when an aim is missed).
    duration_s : float
    """

    studies: int = 0
    kills: int = 0
    kill_phases: collections.Counter[str] = field(default_factory=collections.Counter)
    resent: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    orphans: int = 0
    pacs_outages: int = 0
    aims: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"studies": self.studies, "kills": self.kills, "kill_phases": dict(self.kill_phases),
                "resent": self.resent, "lost": len(self.lost), "duplicated": len(self.duplicated),
                "orphans": self.orphans, "pacs_outages": self.pacs_outages, "aims": self.aims,
                "duration_s": round(self.duration_s, 1)}


def write_studies(folder: Path, n: int, seed: int = 0, series: int = 2) -> list[tuple[str, list[Path]]]:
    """``n`` small sagittal phantom studies, each with its own UIDs: T1 and
    T2 (``series=2``) or the T2 series alone (``series=1``)."""
    studies = []
    for i in range(n):
        info = StudyInfo(uid_seed=f"spinegate-crash-{seed}-{i}", patient_id=f"CRASH{i:04d}")
        truth = write_phantom_study(folder / f"study{i:04d}", seed=seed * 1000 + i, rows=192, columns=192,
                                    pixel_spacing_mm=1.6, n_slices=13, study=info)
        files = truth["files"] if series == 2 else truth["files"][len(truth["files"]) // 2:]  # T1 first, then T2
        studies.append((truth["study_instance_uid"], files))
    return studies


@dataclass
class _Serve:
    """``spinegate serve`` in a child process that can be killed and started again."""

    root: Path
    pacs_port: int
    biomechanics: bool
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.root / f"serve.{self.starts:03d}.log"

    def start(self) -> None:
        config = {
            "network": {"ae_title": "SPINEGATE", "host": "127.0.0.1", "port": self.port},
            "http": {"enabled": False},
            "storage": {"root": str(self.root / "var")},
            "assembly": {"quiet_period_s": 3.0},
            "biomechanics": {"enabled": self.biomechanics},
            "export": {"destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": self.pacs_port}],
                       "attempts": 20, "backoff_initial_s": 0.5, "backoff_max_s": 2.0},
        }
        (self.root / "spinegate.yaml").write_text(yaml.safe_dump(config))
        self.starts += 1
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "spinegate.service.cli", "--config",
                                      str(self.root / "spinegate.yaml"), "serve"], cwd=REPO, stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        wait_for_echo("127.0.0.1", self.port, "SPINEGATE", 120, self.proc)

    def kill(self) -> list[int]:
        """SIGKILL the server; the PIDs of the children it had."""
        assert self.proc is not None
        children = _children(self.proc.pid)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        return children

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(c) for c in task.read_text().split()]
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


PHASES = ("receive", "assembly", "segmentation", "report_writing", "export")
# The service's log lines that open each step of an analysis (INFO level).
_ANALYSIS_STEPS = (("msg=series routed", "segmentation"), ("msg=seg written", "report_writing"),
                   ("msg=biomechanics done", "report_writing"), ("msg=sr written", "export"))


def _log_tail(path: Path, size: int = 8192) -> str:
    """The end of the service's log (it is polled every 10 ms while aiming
    a kill: reading the whole, growing file each time would be the
    harness's own load)."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - size))
        return f.read().decode(errors="replace")


def _phases(store: StateStore, log_path: Path, sending: bool) -> set[str]:
    """What the service is doing now: from the sender, the state store and,
    within an analysis, the step its log last opened."""
    counts = store.count_by_state()
    phases = {"receive"} if sending else set()
    if counts.get(StudyState.RECEIVED.value) or counts.get(StudyState.COMPLETE.value):
        phases.add("assembly")
    if counts.get(StudyState.PROCESSING.value):
        step = "segmentation"
        for line in _log_tail(log_path).splitlines()[-20:]:
            step = next((name for marker, name in _ANALYSIS_STEPS if marker in line), step)
        phases.add(step if step != "export" else "report_writing")
    if counts.get(StudyState.EXPORTING.value):
        phases.add("export")
    return phases or {"idle"}


class _Sender(threading.Thread):
    """Sends every study, again and whole when a kill breaks its send."""

    def __init__(self, studies: list[tuple[str, list[Path]]], serve: _Serve, up: threading.Event,
                 gaps_s: list[float]) -> None:
        super().__init__(name="sender", daemon=True)
        self.studies, self.serve, self.up, self.gaps_s = studies, serve, up, gaps_s
        self.sending = False
        self.acknowledged: list[str] = []
        self.resent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for (uid, files), gap_s in zip(self.studies, self.gaps_s):
                time.sleep(gap_s)  # studies arrive spread out, as from a scanner
                while True:
                    self.up.wait(300)
                    self.sending = True
                    result = storescu_statuses(files, "127.0.0.1", self.serve.port, "SPINEGATE", "SCANNER",
                                               options=["-to", "10", "-ta", "10", "-td", "10"], timeout_s=120)
                    self.sending = False
                    if result.returncode == 0 and len(result.statuses) == len(files) and not any(result.statuses):
                        self.acknowledged.append(uid)
                        break
                    self.resent += 1
                    time.sleep(0.5)
        except BaseException as e:  # reported by the harness
            self.error = e


def _delivered(pacs_folder: Path) -> dict[str, dict[str, set[str]]]:
    """Per study: the distinct SOP Instance UIDs of each modality at the PACS."""
    found: dict[str, dict[str, set[str]]] = collections.defaultdict(lambda: collections.defaultdict(set))
    for p in pacs_folder.iterdir():
        if p.name.startswith("."):
            continue
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        found[str(ds.StudyInstanceUID)][str(ds.Modality)].add(str(ds.SOPInstanceUID))
    return found


def run_crash_harness(work: Path, n_studies: int, max_kills: int, seed: int = 0,
                      kill_interval_s: tuple[float, float] = (2.0, 6.0), send_gap_s: tuple[float, float] = (0.5, 2.5),
                      biomechanics: bool = False, series_per_study: int = 2,
                      timeout_s: float = 900.0) -> CrashReport:
    """Stream ``n_studies`` phantom studies into ``spinegate serve`` while
    killing it up to ``max_kills`` times; see the module docstring.

    Raises
    ------
    TimeoutError
        When the studies are not all delivered within ``timeout_s``.
    """
    rng = random.Random(seed)
    report = CrashReport()
    t0 = time.monotonic()
    studies = write_studies(work / "studies", n_studies, seed, series_per_study)
    pacs_port = free_port()
    pacs = StoreSCP.start(work / "pacs", pacs_port)
    serve = _Serve(work / "spinegate", pacs_port, biomechanics)
    serve.root.mkdir(parents=True, exist_ok=True)
    up = threading.Event()
    sender = _Sender(studies, serve, up, [rng.uniform(*send_gap_s) for _ in studies])
    killed_children: list[int] = []
    try:
        serve.start()
        store = StateStore(serve.root / "var" / "state.sqlite")
        up.set()
        sender.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not sender.is_alive() and _all_exported(store, sender.acknowledged, n_studies):
                break
            if report.kills < max_kills:
                target = PHASES[report.kills % len(PHASES)]
                time.sleep(rng.uniform(*kill_interval_s))
                if target == "export":  # a PACS outage keeps studies in delivery (retrying)
                    pacs.stop()
                    report.pacs_outages += 1
                # A study reaches delivery only once those queued before it are
                # processed, which on a loaded 2-core machine can outlast 20 s
                # (the aim at delivery was missed once in CI, 2026-12-07).
                waited_from = time.monotonic()
                wait_until = waited_from + (120 if target == "export" else 20)
                while time.monotonic() < wait_until and (sender.is_alive() or target != "receive"):
                    if target not in _phases(store, serve.log_path, sender.sending):
                        time.sleep(0.01)
                        continue
                    # A pause of up to 0.02 s (receive) or 0.3 s varies the moment
                    # within the phase; if the phase ended in it (an association
                    # closed, a study moved on: both missed the aim once in CI,
                    # 2026-12-07), wait for the next one.
                    time.sleep(rng.uniform(0.0, 0.02 if target == "receive" else 0.3))
                    if target in _phases(store, serve.log_path, sender.sending):
                        break
                up.clear()
                sending = sender.sending
                killed_children += serve.kill()
                report.kills += 1
                seen = _phases(store, serve.log_path, sending)
                report.kill_phases.update(seen)
                report.aims.append({"target": target, "seen": sorted(seen),
                                    "waited_s": round(time.monotonic() - waited_from, 1),
                                    "states": store.count_by_state()})
                serve.start()
                up.set()
                if target == "export":
                    time.sleep(rng.uniform(1.0, 3.0))  # the outage outlasts the restart a little
                    pacs = StoreSCP.start(pacs.folder, pacs_port)
            else:
                time.sleep(0.5)
        else:
            raise TimeoutError(f"not every study was delivered within {timeout_s:.0f} s")
        if sender.error is not None:
            raise sender.error
        orphan_deadline = time.monotonic() + 10  # children watch their parent and follow it within ~1 s
        while any(_alive(pid) for pid in killed_children) and time.monotonic() < orphan_deadline:
            time.sleep(0.2)
        report.orphans = sum(_alive(pid) for pid in killed_children)
    finally:
        serve.stop()
        if pacs.proc.poll() is None:
            pacs.stop()
        if "store" in locals():
            store.close()
    delivered = _delivered(pacs.folder)
    report.studies, report.resent = len(sender.acknowledged), sender.resent
    for uid in sender.acknowledged:
        objs = delivered.get(uid, {})
        n_seg, n_sr = len(objs.get("SEG", ())), len(objs.get("SR", ()))
        if n_seg < series_per_study or n_sr < 1:
            report.lost.append(uid)
        elif n_seg > series_per_study or n_sr > 1:
            report.duplicated.append(uid)
    report.duration_s = time.monotonic() - t0
    return report


def _all_exported(store: StateStore, acknowledged: list[str], n_studies: int) -> bool:
    if len(acknowledged) < n_studies:
        return False
    done = (StudyState.EXPORTED, StudyState.FAILED, StudyState.UNDELIVERED)
    return all((rec := store.study(uid)) is not None and rec.state in done for uid in acknowledged)
