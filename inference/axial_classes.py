"""Output classes and input grid of the axial paraspinal-muscle network.

Shared by training (which imports torch) and the ONNX Runtime engine (which
does not), so the class order cannot drift between the two.
"""
from __future__ import annotations

from spinegate.dicom_io.muscles import MUSCLE_LABELS

__all__ = ["AXIAL_CLASS_NAMES", "AXIAL_SPACING_MM", "AXIAL_TILE", "MUSCLE_CLASSES", "VB_CLASS", "DISC_CLASS"]

VB_CLASS, DISC_CLASS = 1, 2
# (muscle, side) → output class, in MUSCLE_LABELS order after background,
# vertebral body and disc.
MUSCLE_CLASSES = {key: 3 + i for i, key in enumerate(MUSCLE_LABELS)}
AXIAL_CLASS_NAMES = ("background", "vertebral_body", "disc") + tuple(f"{m}_{s}" for m, s in MUSCLE_LABELS)
# In-plane pixel spacing of the network's input (mm). Axial series come at
# 0.3-1.0 mm; 1 mm keeps a 400 mm field of view within 400 pixels.
AXIAL_SPACING_MM = 1.0
# Training patch = inference tile (rows, columns) at AXIAL_SPACING_MM.
AXIAL_TILE = (192, 192)
