"""The phantom subject: a synthetic lumbar spine and its paraspinal muscles
with exact truth, rendered as MR images on any slice grid and written as a
DICOM study (`study`). It is spinegate's sample-data generator (``spinegate
demo``) and the exact-answer source of the tests and training data.

Contrasts are `spinegate.dicom_io.classify.Weighting` (T1, T2, WATER, FAT),
the same enum the classifier assigns to received series.
"""
from spinegate.dicom_io.phantom.anatomy import (
    TRUNK_HALF_DEPTH_MM,
    TRUNK_INNER_HALF_DEPTH_MM,
    MuscleField,
    PhantomElement,
    SliceGrid,
    SpinePhantom,
    make_spine_phantom,
    sagittal_grid,
)
from spinegate.dicom_io.phantom.render import render_phantom, render_phantom_weightings

__all__ = [
    "TRUNK_HALF_DEPTH_MM",
    "TRUNK_INNER_HALF_DEPTH_MM",
    "MuscleField",
    "PhantomElement",
    "SliceGrid",
    "SpinePhantom",
    "make_spine_phantom",
    "render_phantom",
    "render_phantom_weightings",
    "sagittal_grid",
]
