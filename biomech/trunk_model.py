"""Build the subject's OpenSim trunk model.

Segments: pelvis (with sacrum; pinned to the ground at the hips, its tilt a
coordinate held by a hip-moment actuator standing in for the legs), L5 … L1,
an upper body (T12 and everything above it but the arms), and two arms
hanging from the shoulders. Each intervertebral joint is a pin (flexion-
extension about the medio-lateral axis) at the subject's disc centroid
(`biomech.spine_geometry`). A load held in the hands is a mass welded to the
grip point of each arm.

Frames: OpenSim's ground convention, x anterior, y superior, z right. Every
body's frame has its origin at the joint below it and is parallel to the
ground in upright stance, so coordinates read as angles from upright;
positive = extension (right-hand rule about +z), flexion is negative.

Muscles (`biomech.muscles`) are DeGroote-Fregly 2016 fascicles with rigid
tendons whose optimal fibre length is 90 % and tendon slack length 10 % of
their upright path length (fibres at optimal length standing). Their lower
activation bound is 0.001: Thelen's fixed 0.01 floor would add ~400 N of
co-contraction to every joint on 60-odd trunk fascicles. Each spine coordinate also carries a
weak reserve actuator (1 N·m at full activation): a pose the muscles can
hold needs almost none, so a large reserve torque reports a pose the
muscles are too weak for instead of hiding it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from spinegate.biomech.anthropometry import (
    LEVEL_COM_ANTERIOR_MM,
    Subject,
    arm_com_from_shoulder_m,
    arm_reach_m,
    segment_masses,
    shoulder_above_t12l1_m,
)
from spinegate.biomech.muscles import LATERAL_M, MOMENT_ARM_MM, Fascicle, MuscleGroup, fascicles
from spinegate.biomech.spine_geometry import JOINTS, LUMBAR, SpineGeometry

__all__ = ["MODEL_NAME", "MODEL_VERSION", "STACK", "BODY_BELOW", "BODY_ABOVE", "PARENT", "COORDINATES", "RESERVE_OPTIMAL_FORCE_NM", "TrunkModel", "build_trunk_model"]

MODEL_NAME = "spinegate_trunk"
MODEL_VERSION = "2026.11.21 (OpenSim 4.6)"

# The spine's bodies from the bottom up; each body above the pelvis hangs
# on the joint under it (its frame origin), whose parent is the body below.
STACK = ("pelvis", "L5", "L4", "L3", "L2", "L1", "thorax")
BODY_BELOW = dict(zip(STACK[1:], JOINTS))  # body → joint under it
BODY_ABOVE = {j: body for body, j in BODY_BELOW.items()}  # joint → body on it
PARENT = dict(zip(STACK[1:], STACK[:-1]))  # body → body below
COORDINATES = ("pelvis_tilt",) + tuple(f"{j}_flex_ext" for j in JOINTS) + ("shoulder_r_flex", "shoulder_l_flex")
RESERVE_OPTIMAL_FORCE_NM = 1.0
MIN_ACTIVATION = 0.001
REFERENCE_HEIGHT_M = 1.75
_L5S1_HEIGHT_FRACTION = 0.575
# Height of the upper body's centre of mass above T12L1 at the reference
# stature: head+neck (5.4 kg, ~0.45 m above T12L1) and thorax (15.2 kg,
# ~0.21 m) combined.
UPPER_BODY_COM_HEIGHT_M = 0.273  # of stature, upright (for drawing only)


@dataclass(frozen=True)
class TrunkModel:
    """A built model and what it was built from."""

    model: Any  # opensim.Model (SWIG, untyped)
    subject: Subject
    geometry: SpineGeometry
    fascicles: tuple[Fascicle, ...]
    hand_load_kg: float
    path: Path | None = None


def _posterior(axis: np.ndarray) -> np.ndarray:
    """Posterior unit vector (−x side) perpendicular to a superior axis."""
    return np.array([-axis[1], axis[0]])


def _vec3(xy: np.ndarray, z: float = 0.0):
    import opensim as osim

    return osim.Vec3(float(xy[0]), float(xy[1]), float(z))


def _body_origins(geometry: SpineGeometry, subject: Subject) -> dict[str, np.ndarray]:
    """Upright ground-frame (x, y) origin of every body, L5S1 at (0, 0)."""
    origins = {"pelvis": geometry.point("L5S1")}
    for body, joint in BODY_BELOW.items():
        origins[body] = geometry.point(joint)
    shoulder = geometry.point("T12L1") + np.array([0.0, shoulder_above_t12l1_m(subject)])
    origins["arm_r"] = origins["arm_l"] = shoulder
    return origins


def _com(body: str, geometry: SpineGeometry, subject: Subject) -> np.ndarray:
    """Upright ground-frame centre of mass of a trunk body."""
    k = subject.height_m / REFERENCE_HEIGHT_M
    if body in LUMBAR:
        axis = geometry.vertebra_axis(body)
        return geometry.point(body) - _posterior(axis) * LEVEL_COM_ANTERIOR_MM[body] / 1000.0 * k
    # Upper body (thorax, head, neck): as far anterior as the T12 level's
    # centre of mass, 27.3 cm above T12L1 (docs/measurements.md, "Spinal loads").
    return geometry.point("T12L1") + np.array([LEVEL_COM_ANTERIOR_MM["T12"] / 1000.0, UPPER_BODY_COM_HEIGHT_M]) * k


def build_trunk_model(subject: Subject, geometry: SpineGeometry, hand_load_kg: float = 0.0,
                      measured_acsa_cm2: Mapping[tuple[str, str], float] | None = None,
                      name: str = "spinegate_trunk") -> TrunkModel:
    """Build (not yet written to disk) the subject's model.

    Parameters
    ----------
    subject : Subject
        Stature, mass, sex.
    geometry : SpineGeometry
        Joint centres from the sagittal series.
    hand_load_kg : float
        Mass held in each hand (0: no load body).
    measured_acsa_cm2 : mapping, optional
        Measured muscle areas, see `biomech.muscles.fascicles`.
    """
    import opensim as osim

    if hand_load_kg < 0:
        raise ValueError(f"'hand_load_kg' must be >= 0, got {hand_load_kg}")
    k = subject.height_m / REFERENCE_HEIGHT_M
    masses = segment_masses(subject)
    origins = _body_origins(geometry, subject)
    model = osim.Model()
    model.setName(name)
    model.setGravity(osim.Vec3(0, -9.80665, 0))
    ground = model.getGround()
    l5s1_height = _L5S1_HEIGHT_FRACTION * subject.height_m

    def add_body(name: str, mass: float, com_ground: np.ndarray, radius: float):
        com_local = com_ground - origins[name]
        inertia = 0.4 * mass * radius**2
        body = osim.Body(name, mass, _vec3(com_local), osim.Inertia(inertia, inertia, inertia))
        model.addBody(body)
        return body

    bodies = {}
    # The pelvis mass does not load the spine (it hangs from the hips); a
    # nominal value keeps the multibody system well posed.
    bodies["pelvis"] = add_body("pelvis", 0.142 * subject.mass_kg, origins["pelvis"] + np.array([0.03, -0.08]) * k, 0.1)
    hip = np.array([0.05, -0.09]) * k  # hip joint centres relative to L5S1 (drawing only)
    pelvis_joint = osim.PinJoint("pelvis_tilt", ground, osim.Vec3(hip[0], l5s1_height + hip[1], 0), osim.Vec3(0),
                                 bodies["pelvis"], _vec3(hip), osim.Vec3(0))
    pelvis_joint.updCoordinate().setName("pelvis_tilt")
    model.addJoint(pelvis_joint)
    for body, joint_name in BODY_BELOW.items():
        mass = masses.lumbar_kg[body] if body in LUMBAR else masses.upper_body_kg
        bodies[body] = add_body(body, mass, _com(body, geometry, subject), 0.05 if body in LUMBAR else 0.15)
        parent = PARENT[body]
        joint = osim.PinJoint(joint_name, bodies[parent], _vec3(origins[body] - origins[parent]), osim.Vec3(0),
                              bodies[body], osim.Vec3(0), osim.Vec3(0))
        joint.updCoordinate().setName(f"{joint_name}_flex_ext")
        model.addJoint(joint)
    reach = arm_reach_m(subject)
    for side, z in (("r", 1.0), ("l", -1.0)):
        arm = f"arm_{side}"
        shoulder_z = z * 0.19 * k
        com = origins[arm] - np.array([0.0, arm_com_from_shoulder_m(subject)])
        bodies[arm] = add_body(arm, masses.arm_kg, com, 0.04)
        joint = osim.PinJoint(f"shoulder_{side}", bodies["thorax"], _vec3(origins[arm] - origins["thorax"], shoulder_z),
                              osim.Vec3(0), bodies[arm], osim.Vec3(0), osim.Vec3(0))
        joint.updCoordinate().setName(f"shoulder_{side}_flex")
        model.addJoint(joint)
        if hand_load_kg > 0:
            load = osim.Body(f"hand_load_{side}", hand_load_kg, osim.Vec3(0), osim.Inertia(0.001, 0.001, 0.001))
            model.addBody(load)
            model.addJoint(osim.WeldJoint(f"grip_{side}", bodies[arm], osim.Vec3(0, -reach, 0), osim.Vec3(0), load,
                                          osim.Vec3(0), osim.Vec3(0)))
    _add_actuators(model)
    fas = fascicles(subject.mass_kg, measured_acsa_cm2)
    for f in fas:
        _add_fascicle(model, bodies, origins, geometry, f, k)
    model.finalizeConnections()
    _set_fibre_lengths(model)
    return TrunkModel(model, subject, geometry, tuple(fas), hand_load_kg)


def _add_actuators(model) -> None:
    import opensim as osim

    def actuator(coord: str, optimal_force: float, name: str) -> None:
        a = osim.CoordinateActuator(coord)
        a.setName(name)
        a.setOptimalForce(optimal_force)
        a.setMinControl(-np.inf)
        a.setMaxControl(np.inf)
        model.addForce(a)

    # The legs hold the pelvis and the shoulder muscles the arms: strong
    # actuators, nearly free in the objective, outside the question asked.
    actuator("pelvis_tilt", 10000.0, "hip_moment")
    for side in ("r", "l"):
        actuator(f"shoulder_{side}_flex", 1000.0, f"shoulder_{side}_moment")
    for j in JOINTS:
        actuator(f"{j}_flex_ext", RESERVE_OPTIMAL_FORCE_NM, f"{j}_reserve")


_JOINT_ABOVE = dict(zip(STACK, JOINTS))  # body → joint on top of it


def _crossed_joints(f: Fascicle) -> list[str]:
    lo, hi = STACK.index(f.origin_body), STACK.index(f.insertion_body)
    if hi <= lo:
        raise ValueError(f"fascicle {f.name} must insert above its origin")
    return [_JOINT_ABOVE[b] for b in STACK[lo:hi]]


def _add_fascicle(model, bodies, origins, geometry: SpineGeometry, f: Fascicle, k: float) -> None:
    import opensim as osim

    z = (1.0 if f.side == "r" else -1.0) * LATERAL_M[f.group] * k
    arms_m = [r / 1000.0 * k for r in MOMENT_ARM_MM[f.group]]
    joints = _crossed_joints(f)
    first_arm = arms_m[JOINTS.index(joints[0])]
    if f.origin_body == "pelvis":
        # Below L5S1, at the group's L5S1 moment arm; the flexors reach
        # further down and forward (pubis, pelvic brim).
        l5s1_axis = geometry.disc_axis("L5S1")
        flexor = arms_m[0] < 0
        below = (0.10 if f.group is MuscleGroup.RECTUS_ABDOMINIS else 0.07 if flexor else 0.04) * k
        origin = geometry.point("L5S1") + _posterior(l5s1_axis) * first_arm - l5s1_axis * below
    else:
        axis = geometry.vertebra_axis(f.origin_body)
        origin = geometry.point(f.origin_body) + _posterior(axis) * first_arm
    muscle = osim.DeGrooteFregly2016Muscle()
    muscle.setName(f.name)
    muscle.set_max_isometric_force(f.max_isometric_force_n)
    muscle.set_optimal_fiber_length(0.1)
    muscle.set_tendon_slack_length(0.01)
    muscle.set_ignore_tendon_compliance(True)
    muscle.setMinControl(MIN_ACTIVATION)
    muscle.setMaxControl(1.0)
    muscle.addNewPathPoint(f"{f.name}_origin", bodies[f.origin_body], _vec3(origin - origins[f.origin_body], z))
    for j in joints:
        body = BODY_ABOVE[j]
        p = geometry.point(j) + _posterior(geometry.disc_axis(j)) * arms_m[JOINTS.index(j)]
        muscle.addNewPathPoint(f"{f.name}_{j}", bodies[body], _vec3(p - origins[body], z))
    last_arm = arms_m[JOINTS.index(joints[-1])]
    if f.insertion_body == "thorax":
        axis = geometry.disc_axis("T12L1")
        reach = 0.15 if f.origin_body == "pelvis" else 0.05  # ribs / lower thoracic spinous processes
        p = geometry.point("T12L1") + _posterior(axis) * last_arm + axis * reach * k
    else:
        axis = geometry.vertebra_axis(f.insertion_body)
        p = geometry.point(f.insertion_body) + _posterior(axis) * last_arm
    muscle.addNewPathPoint(f"{f.name}_insertion", bodies[f.insertion_body], _vec3(p - origins[f.insertion_body], z))
    model.addForce(muscle)


def _set_fibre_lengths(model) -> None:
    state = model.initSystem()
    muscles = model.getMuscles()
    for i in range(muscles.getSize()):
        m = muscles.get(i)
        length = m.getLength(state)
        m.setOptimalFiberLength(0.9 * length)
        m.setTendonSlackLength(0.1 * length)
    model.finalizeFromProperties()
