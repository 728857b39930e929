"""Static tasks, OpenSim static optimisation and joint reactions → spinal loads.

For each task the subject's model is posed (pelvis tilt and per-level lumbar
flexion from a lumbopelvic rhythm; arms hanging vertically), OpenSim's
static optimisation finds the muscle forces minimising the sum of squared
activations, and a second run of OpenSim's joint-reaction analysis with
those forces gives the force each intervertebral joint transmits
(BIOMECH.md "OpenSim 4.6 API notes": the two runs must be separate).

Reported per joint: compression along the disc axis and anterior-posterior
shear (N; shear is the force the lower body exerts on the upper one along
the disc's anterior direction, so negative means the upper vertebra is held
back against slipping forward). Per vertebral body L1–L5: the compression
through its lower endplate along its own long axis.

Lumbopelvic rhythm: lumbar share of trunk flexion interpolated through
0° → 0, 30° → 21.5° (lumbar/pelvis 2.51, Tafazzol 2014), 60° → 35° (the
reference run's 35° + 25°), 90° → 42°, 120° → 45° (ratio 1.34 over 90–120°,
Tafazzol); per-level share of the lumbar flexion from Christophy 2012.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from spinegate.biomech.anthropometry import Subject
from spinegate.biomech.spine_geometry import JOINTS, LUMBAR, SpineGeometry
from spinegate.biomech.trunk_model import BODY_ABOVE, BODY_BELOW, COORDINATES, PARENT, build_trunk_model

__all__ = [
    "Task",
    "TASKS",
    "UPRIGHT",
    "FLEXION_60_5KG",
    "JointLoad",
    "TaskLoads",
    "lumbopelvic_rhythm",
    "solve_task",
    "FLAG_INFEASIBLE",
    "RESERVE_LIMIT_NM",
]

log = logging.getLogger(__name__)

LEVEL_SHARE = {"L1L2": 0.255, "L2L3": 0.231, "L3L4": 0.204, "L4L5": 0.185, "L5S1": 0.125, "T12L1": 0.0}
_RHYTHM_TRUNK_DEG = (0.0, 30.0, 60.0, 90.0, 120.0)
_RHYTHM_LUMBAR_DEG = (0.0, 21.5, 35.0, 42.0, 45.0)
# A reserve torque above this means the muscles cannot hold the pose.
RESERVE_LIMIT_NM = 2.0
ACTIVATION_LIMIT = 0.99
FLAG_INFEASIBLE = "pose_infeasible_muscles_too_weak"
GRAVITY = 9.80665


@dataclass(frozen=True)
class Task:
    """A static task: trunk flexion from upright and a mass in each hand."""

    name: str
    trunk_flexion_deg: float
    hand_load_kg: float
    description: str

    def __post_init__(self) -> None:
        if not 0 <= self.trunk_flexion_deg <= 120:
            raise ValueError(f"'trunk_flexion_deg' must be 0-120, got {self.trunk_flexion_deg}")
        if self.hand_load_kg < 0:
            raise ValueError(f"'hand_load_kg' must be >= 0, got {self.hand_load_kg}")


UPRIGHT = Task("upright_standing", 0.0, 0.0, "upright standing, arms hanging")
FLEXION_60_5KG = Task("flexion_60deg_5kg_each_hand", 60.0, 5.0, "60 deg trunk flexion holding 5 kg in each hand")
# The tasks every study reports.
TASKS = (UPRIGHT, FLEXION_60_5KG)


def lumbopelvic_rhythm(trunk_flexion_deg: float) -> tuple[float, dict[str, float]]:
    """(pelvis tilt, per-joint flexion) in degrees for a trunk flexion."""
    lumbar = float(np.interp(trunk_flexion_deg, _RHYTHM_TRUNK_DEG, _RHYTHM_LUMBAR_DEG))
    return trunk_flexion_deg - lumbar, {j: lumbar * LEVEL_SHARE[j] for j in JOINTS}


@dataclass(frozen=True)
class JointLoad:
    """Force transmitted by one intervertebral joint (N)."""

    joint: str
    compression_n: float
    anterior_shear_n: float
    reserve_torque_nm: float


@dataclass
class TaskLoads:
    """Result of one task."""

    task: Task
    joints: dict[str, JointLoad]
    vertebral_body_compression_n: dict[str, float]
    muscle_forces_n: dict[str, float]
    muscle_activations: dict[str, float]
    flags: tuple[str, ...]
    files: dict[str, Path] = field(default_factory=dict)
    solve_s: float = 0.0

    @property
    def feasible(self) -> bool:
        return FLAG_INFEASIBLE not in self.flags


def _pose_deg(task: Task) -> dict[str, float]:
    pelvis, levels = lumbopelvic_rhythm(task.trunk_flexion_deg)
    pose = {"pelvis_tilt": -pelvis}
    pose.update({f"{j}_flex_ext": -levels[j] for j in JOINTS})
    # Arms hang vertically: undo the trunk's total rotation at the shoulder.
    pose["shoulder_r_flex"] = pose["shoulder_l_flex"] = task.trunk_flexion_deg
    return pose


def _body_angles_rad(pose_deg: Mapping[str, float]) -> dict[str, float]:
    """Rotation of each trunk body from upright (rad, + extension)."""
    angles = {"pelvis": np.radians(pose_deg["pelvis_tilt"])}
    for body, joint in BODY_BELOW.items():  # bottom up: the parent's angle is known
        angles[body] = angles[PARENT[body]] + np.radians(pose_deg[f"{joint}_flex_ext"])
    return angles


def _rotate(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _write_motion(path: Path, pose_deg: Mapping[str, float]) -> None:
    # Static pose: constant rows (the spline fit needs at least 6).
    rows = 10
    lines = [path.stem, "version=1", f"nRows={rows}", f"nColumns={len(COORDINATES) + 1}", "inDegrees=yes",
             "endheader", "\t".join(("time",) + COORDINATES)]
    for i in range(rows):
        lines.append("\t".join([f"{i * 0.01:.2f}"] + [f"{pose_deg[c]:.6f}" for c in COORDINATES]))
    path.write_text("\n".join(lines) + "\n")


def _read_row(path: Path, t: float) -> dict[str, float]:
    import opensim as osim

    table = osim.TimeSeriesTable(str(path))
    times = np.array(table.getIndependentColumn())
    row = table.getRowAtIndex(int(np.argmin(np.abs(times - t))))
    labels = table.getColumnLabels()
    return {labels[i]: float(row[i]) for i in range(len(labels))}


def _quiet_opensim():
    """OpenSim logs every solver iteration to stdout and to ./opensim.log;
    keep errors on stderr only (results go to the study's files)."""
    import opensim as osim

    osim.Logger.removeFileSink()
    osim.Logger.setLevelString("error")
    return osim


def _analyze(model_path: Path, motion: Path, out_dir: Path, name: str, analysis, t: float) -> None:
    """Run ``analysis`` on the pose at time ``t`` alone: the pose is static,
    so every other row of the motion would solve the same problem again."""
    import opensim as osim

    tool = osim.AnalyzeTool()
    tool.setName(name)
    tool.setModelFilename(str(model_path))
    tool.setCoordinatesFileName(str(motion))
    tool.setLowpassCutoffFrequency(-1)
    tool.setInitialTime(t)
    tool.setFinalTime(t)
    tool.setResultsDir(str(out_dir))
    analysis.setStartTime(t)
    analysis.setEndTime(t)
    tool.getAnalysisSet().cloneAndAppend(analysis)
    setup = out_dir / f"{name}_setup.xml"
    tool.printToXML(str(setup))
    osim.AnalyzeTool(str(setup)).run()


def solve_task(subject: Subject, geometry: SpineGeometry, task: Task, out_dir: Path,
               measured_acsa_cm2: Mapping[tuple[str, str], float] | None = None) -> TaskLoads:
    """Build, pose and solve one task; files are written to ``out_dir``.

    Raises
    ------
    RuntimeError
        If OpenSim produced no result file (a solver failure).
    """
    osim = _quiet_opensim()
    t0 = time.perf_counter()
    # OpenSim reads the file names inside a setup file relative to that
    # file's folder: a relative out_dir would be applied twice.
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    built = build_trunk_model(subject, geometry, task.hand_load_kg, measured_acsa_cm2, name=f"spinegate_{task.name}")
    model_path = out_dir / f"{task.name}.osim"
    built.model.printToXML(str(model_path))
    pose = _pose_deg(task)
    motion = out_dir / f"{task.name}_pose.mot"
    _write_motion(motion, pose)
    t_mid = 0.04
    so = osim.StaticOptimization()
    so.setName("StaticOptimization")
    so.setUseModelForceSet(True)
    so.setActivationExponent(2)
    so.setUseMusclePhysiology(True)
    so.setConvergenceCriterion(1e-4)
    so.setMaxIterations(100)
    _analyze(model_path, motion, out_dir, f"{task.name}_so", so, t_mid)
    forces_path = out_dir / f"{task.name}_so_StaticOptimization_force.sto"
    activation_path = out_dir / f"{task.name}_so_StaticOptimization_activation.sto"
    if not forces_path.exists():
        raise RuntimeError(f"static optimisation wrote no forces for {task.name}")
    jr = osim.JointReaction()
    jr.setName("JointReaction")
    jr.setForcesFileName(str(forces_path))
    names = osim.ArrayStr()
    for j in JOINTS:
        names.append(j)
    jr.setJointNames(names)
    on = osim.ArrayStr()
    on.append("child")
    jr.setOnBody(on)
    frame = osim.ArrayStr()
    frame.append("ground")
    jr.setInFrame(frame)
    _analyze(model_path, motion, out_dir, f"{task.name}_jr", jr, t_mid)
    jr_path = out_dir / f"{task.name}_jr_JointReaction_ReactionLoads.sto"
    if not jr_path.exists():
        raise RuntimeError(f"joint reaction wrote no loads for {task.name}")
    forces = _read_row(forces_path, t_mid)
    activations = _read_row(activation_path, t_mid)
    reactions = _read_row(jr_path, t_mid)
    angles = _body_angles_rad(pose)
    joints: dict[str, JointLoad] = {}
    for j in JOINTS:
        child = BODY_ABOVE[j]
        prefix = f"{j}_on_{child}_in_ground_"
        f = np.array([reactions[prefix + "fx"], reactions[prefix + "fy"]])
        # The disc turns with the mean of the two bodies it joins.
        axis = _rotate(geometry.disc_axis(j), (angles[PARENT[child]] + angles[child]) / 2)
        anterior = np.array([axis[1], -axis[0]])
        joints[j] = JointLoad(j, float(f @ axis), float(f @ anterior), float(forces.get(f"{j}_reserve", 0.0)))
    bodies: dict[str, float] = {}
    for body in LUMBAR:
        j = BODY_BELOW[body]
        child_prefix = f"{j}_on_{body}_in_ground_"
        f = np.array([reactions[child_prefix + "fx"], reactions[child_prefix + "fy"]])
        bodies[body] = float(f @ _rotate(geometry.vertebra_axis(body), angles[body]))
    muscles = {n: v for n, v in forces.items() if not n.endswith(("_reserve", "_moment"))}
    acts = {n: v for n, v in activations.items() if n in muscles}
    flags = []
    if any(abs(jl.reserve_torque_nm) > RESERVE_LIMIT_NM for jl in joints.values()) or \
            any(a >= ACTIVATION_LIMIT for a in acts.values()):
        flags.append(FLAG_INFEASIBLE)
    files = {"model": model_path, "pose": motion, "muscle_forces": forces_path, "activations": activation_path,
             "joint_reactions": jr_path}
    return TaskLoads(task, joints, bodies, muscles, acts, tuple(flags), files, time.perf_counter() - t0)
