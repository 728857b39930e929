"""Training and evaluation of the engines' networks: the residual U-Net
(PyTorch), training data from the phantom and the shared lumbar MRI, ONNX
export, validation through the DICOM path, INT8 quantisation and the axial
area calibration fit.

Needs the ``[train]`` extra (torch, onnx, nibabel). The service never imports
this package; the engines read what it writes (ONNX models, calibration and
validation records) from ``inference/models``.
"""
