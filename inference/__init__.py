"""Segmentation engines on ONNX Runtime: runtime backends, pre/post-processing
and level naming. Imports dicom_io types only.

Training, validation, quantisation and calibration fitting live in
`spinegate.inference.training` (the ``[train]`` extra); nothing here imports
it."""
