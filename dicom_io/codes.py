"""Coded concepts spinegate writes that pydicom's dictionaries lack.

Declared once, here, under spinegate's private coding scheme "99SPINEGATE"
(PS3.3 8.2: a local scheme designator starts with "99"). Everything else
comes from ``pydicom.sr.codedict.codes``.
"""
from __future__ import annotations

from pydicom.sr.coding import Code

__all__ = ["SCHEME", "CENTROID_L", "CENTROID_P", "CENTROID_S", "NEEDS_REVIEW", "REVIEW_REASON", "UCUM_NEWTON"]

SCHEME = "99SPINEGATE"

# Centre of mass (DCM 128138) split into its patient-coordinate components.
CENTROID_L = Code("SG0001", SCHEME, "Centre of mass, patient x (LPS)")
CENTROID_P = Code("SG0002", SCHEME, "Centre of mass, patient y (LPS)")
CENTROID_S = Code("SG0003", SCHEME, "Centre of mass, patient z (LPS)")
NEEDS_REVIEW = Code("SG0010", SCHEME, "Result needs human review")
REVIEW_REASON = Code("SG0011", SCHEME, "Review reason")

UCUM_NEWTON = Code("N", "UCUM", "newton")
