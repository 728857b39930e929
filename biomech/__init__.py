"""Measurements from label volumes (pure functions) and, later, the OpenSim
load model. Imports dicom_io types only; never touches the network."""
