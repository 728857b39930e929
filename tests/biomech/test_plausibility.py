"""Review checks on a series' measured structures, against exact answers."""
import numpy as np

from spinegate.biomech.plausibility import implausible_size_flags, missing_lumbar_levels, with_review_flags
from spinegate.dicom_io.levels import structure_by_name
from spinegate.dicom_io.measurements import HeightLine, StructureMeasurements

LINE = HeightLine(0, ((0.0, 0.0), (1.0, 0.0)))


def _m(name: str, volume_cm3: float, height_mm: float, flags=()) -> StructureMeasurements:
    return StructureMeasurements(structure_by_name(name), volume_cm3, height_mm, np.zeros(3), LINE, tuple(flags))


def _spine(**changes):
    bodies = {n: (30.0, 27.0) for n in ("L1", "L2", "L3", "L4", "L5")}
    discs = {n: (10.0, 9.0) for n in ("T12L1", "L1L2", "L2L3", "L3L4", "L4L5", "L5S1")}
    sizes = {**bodies, **discs, "T11": (8.0, 10.0), "S1": (12.0, 20.0), **changes}
    return [_m(n, v, h) for n, (v, h) in sizes.items() if v is not None]


def test_an_under_segmented_disc_and_a_merged_one_are_flagged_and_nothing_else():
    flags = implausible_size_flags(_spine(L3L4=(2.9, 9.0), L4L5=(25.0, 21.0)))
    assert flags == {"L3L4": ["implausible_size_volume_0.29x_median"],
                     "L4L5": ["implausible_size_volume_2.50x_median", "implausible_size_height_2.33x_median",
                              "implausible_size_height_21.0mm_outside_1_20"]}


def test_thoracic_bodies_and_s1_are_not_compared_with_the_lumbar_ones():
    # T11 (8 cm³) and S1 (12 cm³) are far below the lumbar bodies' median, by nature.
    assert implausible_size_flags(_spine()) == {}


def test_too_few_structures_of_a_kind_give_only_the_absolute_bounds():
    assert implausible_size_flags([_m("L4", 30.0, 27.0), _m("L5", 8.0, 10.0)]) == {
        "L5": ["implausible_size_height_10.0mm_outside_12_45"]}


def test_a_missing_level_is_carried_by_its_neighbours_above_and_below():
    present = [m.structure.name for m in _spine(L3=(None, None))]
    assert missing_lumbar_levels(present) == {"L2L3": ["lumbar_level_missing_L3"],
                                              "L3L4": ["lumbar_level_missing_L3"]}
    # A run of missing structures: its ends carry every missing name.
    present = [m.structure.name for m in _spine(L3=(None, None), L3L4=(None, None))]
    assert missing_lumbar_levels(present)["L4"] == ["lumbar_level_missing_L3", "lumbar_level_missing_L3L4"]
    # Nothing below L5: only the structure above carries it.
    present = [m.structure.name for m in _spine(L5S1=(None, None), S1=(None, None))]
    assert missing_lumbar_levels(present) == {"L5": ["lumbar_level_missing_L5S1"]}


def test_flags_are_added_to_the_structures_own():
    out = {m.structure.name: m.flags for m in with_review_flags(
        [_m("L4", 30.0, 27.0, ["touches_field_of_view_edge"]), *_spine(L4=(None, None), L2=(12.0, 27.0))])}
    assert out["L4"] == ("touches_field_of_view_edge",)
    assert out["L2"] == ("implausible_size_volume_0.40x_median",)
