"""spinegate's DICOM conformance suite: checks every claim of
CONFORMANCE.md against a running spinegate with dcmtk, dicom3tools, dcmqi
and highdicom (run it with ``conformance/run``)."""
