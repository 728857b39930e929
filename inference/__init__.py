"""Segmentation engines: networks, training, ONNX export, runtime backends,
pre/post-processing and level naming. Imports dicom_io types only."""
