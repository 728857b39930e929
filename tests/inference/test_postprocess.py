"""Level naming on synthetic class maps with known answers."""
import numpy as np

from spinegate.dicom_io.levels import structure_by_name
from spinegate.inference.level_naming import CLASS_DISC, CLASS_S1, CLASS_VB, FLAG_UNANCHORED, name_levels
from spinegate.inference.postprocess import clean_class_mask

# Sagittal grid: rows run inferior (row step -z), 2 mm pixels, 4 mm slices.
AFFINE = np.array([[4.0, 0, 0, 0], [0, 0, 2.0, 0], [0, -2.0, 0, 200.0], [0, 0, 0, 1]])


def _spine(bodies: int, with_s1: bool, rows: int = 220) -> np.ndarray:
    """Bodies 12 rows high separated by 5-row discs, from the bottom up."""
    classes = np.zeros((5, rows, 60), np.uint8)
    r = rows - 5
    if with_s1:
        classes[1:4, r - 12 : r, 15:45] = CLASS_S1
        r -= 12
        classes[1:4, r - 5 : r, 15:45] = CLASS_DISC
        r -= 5
    for _ in range(bodies):
        classes[1:4, r - 12 : r, 15:45] = CLASS_VB
        r -= 12
        if r - 5 > 0:
            classes[1:4, r - 5 : r, 15:45] = CLASS_DISC
            r -= 5
    return classes


def _rows(label_map: np.ndarray, name: str) -> tuple[int, int]:
    rows = np.where((label_map == structure_by_name(name).label).any(axis=(0, 2)))[0]
    return int(rows.min()), int(rows.max())


def test_levels_count_up_from_s1():
    named = name_levels(_spine(6, with_s1=True), AFFINE, 4 * 2 * 2)
    assert named.series_flags == ()
    order = ["S1", "L5", "L4", "L3", "L2", "L1", "T12"]
    bottoms = [_rows(named.label_map, n)[1] for n in order]
    assert bottoms == sorted(bottoms, reverse=True)
    assert _rows(named.label_map, "L5S1")[0] > _rows(named.label_map, "L5")[1]
    assert _rows(named.label_map, "L4L5")[1] < _rows(named.label_map, "L5")[0]
    # The disc above the top body is named by extrapolation.
    assert (named.label_map == structure_by_name("T11T12").label).any()


def test_without_s1_the_lowest_body_is_l5_and_flagged():
    named = name_levels(_spine(5, with_s1=False), AFFINE, 16)
    assert FLAG_UNANCHORED in named.series_flags
    assert _rows(named.label_map, "L5")[1] > _rows(named.label_map, "L1")[1]
    assert not (named.label_map == structure_by_name("S1").label).any()


def test_without_s1_the_disc_under_the_lowest_body_is_l5s1():
    classes = _spine(5, with_s1=True)
    classes[classes == CLASS_S1] = 0  # S1 missed (or out of view); its disc is there
    named = name_levels(classes, AFFINE, 16)
    assert FLAG_UNANCHORED in named.series_flags
    assert _rows(named.label_map, "L5S1")[0] > _rows(named.label_map, "L5")[1]
    assert _rows(named.label_map, "L4L5")[1] < _rows(named.label_map, "L5")[0]


def test_spurious_small_components_are_dropped_and_edges_flagged():
    classes = _spine(5, with_s1=True)
    classes[2, 2:4, 50:52] = CLASS_VB  # 4 voxels = 64 mm3, far above the spine
    named = name_levels(classes, AFFINE, 16)
    assert not (named.label_map == structure_by_name("T12").label).any()
    classes = _spine(5, with_s1=True)
    classes[1:4, 0:8, 15:45] = CLASS_VB  # a body cut by the top of the field of view
    named = name_levels(classes, AFFINE, 16)
    assert "touches_field_of_view_edge" in named.structure_flags["T12"]


def test_clean_class_mask_fills_holes_and_orders_by_size():
    mask = np.zeros((3, 40, 40), bool)
    mask[:, 5:20, 5:20] = True
    mask[:, 10, 10] = False  # hole
    mask[:, 30:35, 30:35] = True
    parts = clean_class_mask(mask, min_voxels=10)
    assert len(parts) == 2
    assert parts[0][:, 10, 10].all()
    assert parts[0].sum() > parts[1].sum()


def test_bodies_joined_by_a_thin_bridge_are_split():
    classes = _spine(5, with_s1=True)
    # A 1-pixel-wide bridge through the disc between two bodies in one lateral slice.
    rows = np.where((classes[1] == CLASS_DISC).any(axis=1))[0]
    classes[1, rows[len(rows) // 2] - 3 : rows[len(rows) // 2] + 3, 30] = CLASS_VB
    parts = clean_class_mask(classes == CLASS_VB, 10, (4.0, 2.0, 2.0), split_radius_mm=3.0)
    assert len(parts) == 5
    named = name_levels(classes, AFFINE, 16)
    assert all((named.label_map == structure_by_name(n).label).any() for n in ("L1", "L2", "L3", "L4", "L5", "S1"))


def test_small_touching_fragment_is_merged_but_edge_partial_body_is_kept():
    from spinegate.inference.postprocess import merge_fragments

    a = np.zeros((3, 60, 20), bool)
    a[:, 5:25, 5:15] = True  # body (3000 vx)
    b = np.zeros_like(a)
    b[:, 25:29, 5:15] = True  # fragment touching it (120 vx)
    c = np.zeros_like(a)
    c[:, 35:55, 5:15] = True  # another body
    edge = np.zeros_like(a)
    edge[:, 0:3, 5:15] = True  # partial body at the top edge, touching nothing
    merged = merge_fragments([a, c, b, edge])
    assert len(merged) == 3
    assert any(m[:, 27, 8].all() and m[:, 10, 8].all() for m in merged)
    assert any(m[:, 1, 8].all() and m.sum() == edge.sum() for m in merged)


def test_off_column_components_are_not_bodies():
    from spinegate.inference.level_naming import on_spinal_column

    z = np.array([-80.0, -45, -10, 25, 60, 95])
    y = 0.004 * z**2 - 10  # lordotic curve
    centroids = np.stack([np.zeros_like(z), y, z], axis=1)
    stray = np.array([[-25.0, -70.0, 80.0]])
    keep = on_spinal_column(np.vstack([centroids, stray]), np.array([8000] * 6 + [1000]))
    assert keep.tolist() == [True] * 6 + [False]



def test_clean_axial_classes_keeps_the_largest_component_and_fills_its_holes():
    from spinegate.inference.axial_engine import clean_axial_classes

    classes = np.zeros((1, 40, 40), np.uint8)
    classes[0, 5:20, 5:20] = 3  # a muscle with a hole ...
    classes[0, 8:16, 8:16] = 0
    classes[0, 10:14, 10:14] = 5  # ... and another structure of 16 px inside the hole
    classes[0, 30:33, 30:33] = 3  # a smaller second piece of the same muscle
    classes[0, 0:10, 30:40] = 4  # a muscle on the image corner with a notch open to the border
    classes[0, 0:4, 34:36] = 0
    classes[0, 36:39, 1:3] = 6  # 6 px: under the minimum area
    out = clean_axial_classes(classes, pixel_area_mm2=1.0, min_area_mm2=15.0)
    expected = np.zeros_like(classes)
    expected[0, 5:20, 5:20] = 3  # the hole is muscle ...
    expected[0, 10:14, 10:14] = 5  # ... but the other structure keeps its pixels
    expected[0, 0:10, 30:40] = 4
    expected[0, 0:4, 34:36] = 0  # a notch open to the border is not a hole
    np.testing.assert_array_equal(out, expected)


def test_fill_holes_2d_is_scipys_fill_holes():
    from scipy import ndimage

    from spinegate.inference.postprocess import fill_holes_2d

    rng = np.random.default_rng(3)
    for _ in range(20):
        mask = ndimage.binary_opening(rng.random((40, 50)) > 0.45)
        np.testing.assert_array_equal(fill_holes_2d(mask), ndimage.binary_fill_holes(mask))
    assert not fill_holes_2d(np.zeros((5, 5), bool)).any()
    ring = np.zeros((6, 6), bool)
    ring[0:3, 0:3] = True  # a ring on the corner: its one-pixel hole is filled
    ring[1, 1] = False
    assert fill_holes_2d(ring)[1, 1]



def test_fast_component_geometry_is_scipys_and_numpys_bit_for_bit():
    """The post-processing's voxel lists, centroids, component sizes and
    contact tests are the library functions' results, exactly (the level
    names and label maps must not move by a voxel)."""
    from scipy import ndimage

    from spinegate.dicom_io.volume import centroid_index, voxel_indices
    from spinegate.inference.postprocess import _touching, component_sizes

    rng = np.random.default_rng(11)
    conn = ndimage.generate_binary_structure(3, 1)
    for shape in ((7, 60, 50), (1, 33, 47), (12, 9, 80)):
        labels, n = ndimage.label(ndimage.binary_opening(rng.random(shape) > 0.5), structure=conn)
        np.testing.assert_array_equal(component_sizes(labels, n),
                                      ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1)))
        assert component_sizes(labels, n).dtype == np.float64
        for k in range(1, min(n, 12) + 1):
            mask = labels == k
            np.testing.assert_array_equal(voxel_indices(mask), np.argwhere(mask))
            assert np.array_equal(centroid_index(mask), np.array(ndimage.center_of_mass(mask)))
            other = labels == (k % n) + 1
            assert _touching(mask, other) == bool((ndimage.binary_dilation(mask, structure=conn) & other).any())
    edge = np.zeros((3, 5, 5), bool)
    edge[2, 4, 4] = True  # at the far corner: the box is clipped, not wrapped
    corner = np.zeros_like(edge)
    corner[2, 3, 4] = True
    assert _touching(edge, corner) and not _touching(edge, np.roll(corner, 2, axis=1))  # wrapped to row 0
    assert voxel_indices(np.zeros((2, 3), bool)).shape == (0, 2)


def _body_rows(classes: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) row of each body of a `_spine` map, from the top."""
    rows = np.where((classes[2] == CLASS_VB).any(axis=1))[0]
    runs = np.split(rows, np.where(np.diff(rows) > 1)[0] + 1)
    return [(int(r[0]), int(r[-1])) for r in runs]


def test_two_bodies_joined_where_the_disc_was_missed_are_split_and_named():
    classes = _spine(6, with_s1=True)
    upper_l5, lower_l4 = _body_rows(classes)[-1][0], _body_rows(classes)[-2][1]
    # the L4L5 disc called body, narrowed to a waist
    classes[1:4, lower_l4 + 1 : upper_l5, 15:45] = 0
    classes[1:4, lower_l4 + 1 : upper_l5, 25:35] = CLASS_VB
    named = name_levels(classes, AFFINE, 16)
    assert named.series_flags == ()
    assert _rows(named.label_map, "L5")[0] >= lower_l4 + 1
    assert _rows(named.label_map, "L4")[1] <= upper_l5 - 1
    assert _rows(named.label_map, "L1") == _body_rows(classes)[1]


def _four_bodies() -> list[np.ndarray]:
    """Four separate 12-row body masks on a (3, 220, 60) grid."""
    bodies = []
    for top in (10, 40, 70, 100):
        b = np.zeros((3, 220, 60), bool)
        b[:, top : top + 12, 15:45] = True
        bodies.append(b)
    return bodies


def test_s1_at_or_one_pixel_from_the_inferior_edge_is_cut_by_the_field_of_view():
    from spinegate.inference.level_naming import FLAG_S1_AT_EDGE, naming_unverified

    # _spine leaves 5 empty rows (10 mm) under S1; rolled down by k rows, k - 5 stay
    for shift, cut in ((5, True), (4, True), (3, False), (0, False)):
        named = name_levels(np.roll(_spine(5, with_s1=True), shift, axis=1), AFFINE, 4 * 2 * 2)
        assert (FLAG_S1_AT_EDGE in named.series_flags) is cut, shift
        assert bool(naming_unverified(named.series_flags)) is cut, shift


def test_a_body_broken_in_two_is_one_body_and_neighbours_stay_apart():
    from spinegate.inference.postprocess import regularise_body_heights

    bodies = _four_bodies()
    # a body cut into two touching halves (as the core split
    # between bodies leaves it), each too big to be a fragment
    upper, lower = np.zeros((3, 220, 60), bool), np.zeros((3, 220, 60), bool)
    upper[:, 130:136, 15:45] = True
    lower[:, 136:142, 15:45] = True
    out = regularise_body_heights(bodies + [upper, lower], AFFINE)
    assert len(out) == 5 and any((o == (upper | lower)).all() for o in out)
    # two small bodies touching through a bridge across their disc are two
    small_a, small_b = np.zeros((3, 220, 60), bool), np.zeros((3, 220, 60), bool)
    small_a[:, 150:158, 15:45] = True
    small_a[1, 158:163, 29:31] = True
    small_b[:, 163:171, 15:45] = True
    assert len(regularise_body_heights(bodies + [small_a, small_b], AFFINE)) == 6


def test_two_broken_bodies_are_joined_though_their_halves_hold_the_median_down():
    from spinegate.inference.postprocess import regularise_body_heights

    bodies = _four_bodies()  # 24 mm high each
    # one body split obliquely, its halves 20 mm high sharing half their extent
    front, back = np.zeros((3, 220, 60), bool), np.zeros((3, 220, 60), bool)
    front[:, 130:140, 15:30] = True
    back[:, 134:144, 30:45] = True
    # another broken across, 18 and 16 mm, overlapping a third of that: short
    # beside 24 mm bodies (0.8 × 24 = 19.2), not beside the first median of
    # all eight components (22 mm: 17.6)
    upper, lower = np.zeros((3, 220, 60), bool), np.zeros((3, 220, 60), bool)
    upper[:, 160:169, 15:32] = True
    lower[:, 166:174, 32:45] = True
    out = regularise_body_heights(bodies + [front, back, upper, lower], AFFINE)
    assert len(out) == 6
    assert any((o == (front | back)).all() for o in out) and any((o == (upper | lower)).all() for o in out)


def test_a_tall_body_without_a_waist_is_not_split():
    from spinegate.inference.postprocess import regularise_body_heights

    bodies = _four_bodies()
    tilted = np.zeros((3, 220, 60), bool)
    for r in range(130, 152):  # a 22-row parallelogram (tilted L5): no waist
        tilted[:, r, 15 + (r - 130) // 2 : 45 + (r - 130) // 2] = True
    out = regularise_body_heights(bodies + [tilted], AFFINE)
    assert len(out) == 5 and any((o == tilted).all() for o in out)
    # the same height with a waist in the middle is two bodies
    waisted = tilted.copy()
    waisted[:, 140:142, :] = False
    waisted[:, 140:142, 28:32] = True
    assert len(regularise_body_heights(bodies + [waisted], AFFINE)) == 6


def test_s1_called_a_body_in_the_midline_slice_stays_s1_and_sacral_segments_stay_out():
    classes = np.roll(_spine(5, with_s1=True, rows=240), -20, axis=1)  # S1 on rows 203-214
    classes[2, 203:211, 15:45] = CLASS_VB  # the midline slice calls S1's upper part a body
    classes[1:4, 222:234, 15:45] = CLASS_VB  # a sacral segment below S1, outside its footprint
    named = name_levels(classes, AFFINE, 4 * 2 * 2)
    s1 = structure_by_name("S1").label
    assert (named.label_map[2, 204:210, 16:44] == s1).all()  # (smoothing rounds the corners)
    assert (named.label_map[1:4, 222:234] == 0).all()
    assert _rows(named.label_map, "S1") == (203, 214)
    assert _rows(named.label_map, "L5")[1] < 203 - 5
    assert "more_bodies_than_levels" not in named.series_flags


def test_absorb_into_s1_takes_only_components_mostly_inside_s1s_footprint():
    from spinegate.inference.level_naming import absorb_into_s1

    s1 = np.zeros((3, 100, 40), bool)
    s1[[0, 2], 60:75, 10:30] = True
    inside = np.zeros_like(s1)
    inside[1, 60:75, 10:30] = True  # the midline gap of S1
    above = np.zeros_like(s1)
    above[:, 40:55, 10:30] = True  # L5
    half_out = np.zeros_like(s1)
    half_out[1, 70:85, 10:30] = True  # a third of it in the footprint: a sacral segment
    merged, rest = absorb_into_s1(s1, [inside, above, half_out], AFFINE)
    assert (merged == (s1 | inside)).all()
    assert len(rest) == 2 and rest[0] is above and rest[1] is half_out
    # the share is the rule: at a third, the segment would join
    assert len(absorb_into_s1(s1, [half_out], AFFINE, min_share=0.3)[1]) == 0


def test_a_body_split_side_by_side_is_one_body_though_each_part_is_full_height():
    from spinegate.inference.postprocess import regularise_body_heights

    bodies = _four_bodies()
    # one body cut obliquely into two touching parts, each as tall as a body
    front, back = np.zeros((3, 220, 60), bool), np.zeros((3, 220, 60), bool)
    front[:, 130:142, 15:30] = True
    back[:, 133:145, 30:45] = True
    out = regularise_body_heights(bodies + [front, back], AFFINE)
    assert len(out) == 5 and any((o == (front | back)).all() for o in out)
    # stacked full-height neighbours touching across a one-row overlap stay two
    upper, lower = np.zeros((3, 220, 60), bool), np.zeros((3, 220, 60), bool)
    upper[:, 130:142, 15:45] = True
    lower[:, 141:153, 15:45] = True
    assert len(regularise_body_heights(bodies + [upper, lower], AFFINE)) == 6


def _stacked_bodies(broken: tuple[int, ...]) -> tuple[list[np.ndarray], list[float]]:
    """Five 12-row bodies, 17 rows (34 mm) apart, on a (3, 220, 60) grid,
    those in ``broken`` cut across into two touching 6-row halves; and the
    patient z (mm) of the six discs around them."""
    bodies = []
    for k in range(5):
        top = 10 + 17 * k
        for lo, hi in ((top, top + 6), (top + 6, top + 12)) if k in broken else ((top, top + 12),):
            b = np.zeros((3, 220, 60), bool)
            b[:, lo:hi, 15:45] = True
            bodies.append(b)
    disc_rows = [7 + 17 * k for k in range(6)]
    return bodies, [float(AFFINE[2] @ [0, r, 0, 1]) for r in disc_rows]


def test_body_halves_between_the_same_two_discs_are_joined_though_they_set_the_median():
    from spinegate.inference.postprocess import regularise_body_heights

    bodies, discs = _stacked_bodies(broken=(1, 2, 3, 4))
    whole, _ = _stacked_bodies(broken=())
    # eight 12 mm halves and one 24 mm body: the halves are the median body,
    # none is short beside it, so heights alone leave nine bodies
    assert len(regularise_body_heights(bodies, AFFINE)) == 9
    out = regularise_body_heights(bodies, AFFINE, discs)
    assert len(out) == 5 and all(any((o == w).all() for o in out) for w in whole)
    # three pitches are needed to trust their median: with three discs nothing
    # joins, with four the halves inside their three intervals do
    assert len(regularise_body_heights(bodies, AFFINE, discs[:3])) == 9
    assert len(regularise_body_heights(bodies, AFFINE, discs[:4])) == 7
    # discs at odd pitches hold nothing: 34 mm against a median of 12 mm
    assert len(regularise_body_heights(bodies, AFFINE, discs + [z + 12.0 for z in discs[:3]])) == 9


def test_two_whole_bodies_around_a_missed_disc_are_not_joined():
    from spinegate.inference.postprocess import regularise_body_heights

    bodies, discs = _stacked_bodies(broken=())
    # the disc between the second and third bodies called body where they
    # meet in the midline slice: they touch, with no disc centre between them
    bridge = np.zeros((3, 220, 60), bool)
    bridge[1, 39:44, 30] = True
    bodies[1] |= bridge
    missed = discs[:2] + discs[3:]
    assert len(regularise_body_heights(bodies, AFFINE, missed)) == 5
    # nor when the discs found around them lie at a usual pitch (48 mm
    # against a median of 44): together they are taller (58 mm) than it
    displaced = [discs[0], discs[1] - 10.0, discs[3] + 10.0] + discs[4:]
    assert len(regularise_body_heights(bodies, AFFINE, displaced)) == 5



def test_a_spine_with_most_bodies_broken_across_is_named_from_its_discs():
    # 1 mm rows: S1, then five 26 mm bodies under 8 mm discs, from the bottom up
    affine = np.array([[4.0, 0, 0, 0], [0, 0, 1.0, 0], [0, -1.0, 0, 200.0], [0, 0, 0, 1]])
    classes = np.zeros((5, 240, 80), np.uint8)
    classes[1:4, 205:230, 20:60] = CLASS_S1
    tops = [197 - 34 * (k + 1) for k in range(5)]  # L5 first
    for top in tops:
        classes[1:4, top : top + 26, 20:60] = CLASS_VB
        classes[1:4, top + 26 : top + 34, 20:60] = CLASS_DISC
    classes[1:4, tops[-1] - 8 : tops[-1], 20:60] = CLASS_DISC
    truth = name_levels(classes, affine, 4).label_map
    # L5-L2 each cut across by three rows called background, their halves
    # meeting through a bridge in the midline slice (the core split parts them)
    for top in tops[:4]:
        classes[1:4, top + 12 : top + 15, 20:60] = 0
        classes[2, top + 12 : top + 15, 38:42] = CLASS_VB
    named = name_levels(classes, affine, 4)
    assert named.series_flags == ()
    for level in ("L1", "L2", "L3", "L4", "L5", "S1"):
        assert _rows(named.label_map, level) == _rows(truth, level), level


def test_a_body_two_levels_high_on_a_lateral_slice_leaves_the_naming_unverified():
    """VB1_02 cropped 55 mm: L5 called S1 in the midline slices and joined
    to L4 on one lateral slice; on its largest slice the joined body is one
    body high, so it is not split, and the count starts a level low."""
    from spinegate.inference.level_naming import FLAG_BODY_TWO_LEVELS_HIGH, naming_unverified

    classes = _spine(6, with_s1=False)
    l5_rows = np.flatnonzero((classes[2] == CLASS_VB).any(axis=1))[-12:]  # the lowest body
    l4_top = l5_rows[0] - 5 - 12
    classes[1:4, l5_rows[0]:l5_rows[-1] + 1, 15:45] = CLASS_S1  # L5 called S1 in the midline
    plain = name_levels(classes, AFFINE, 16)
    assert FLAG_BODY_TWO_LEVELS_HIGH not in plain.series_flags
    classes[4, l4_top:l5_rows[-1] + 1, 20:32] = CLASS_VB  # L4 and L5 joined on one lateral slice
    named = name_levels(classes, AFFINE, 16)
    assert FLAG_BODY_TWO_LEVELS_HIGH in named.series_flags
    assert naming_unverified(named.series_flags) == "a body is two levels high on some slices"
