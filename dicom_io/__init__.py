"""DICOM as data: series → volumes, classification, SEG/SR writing, C-STORE SCU.

Only this package imports pydicom, highdicom and pynetdicom's SCU side for
objects; `inference` and `biomech` receive plain typed values from it.
"""
