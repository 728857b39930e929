"""spinegate: a DICOM-native PACS integration service for lumbar spine MRI.

The repository's top-level folders are installed as its subpackages
(pyproject.toml maps them): ``spinegate.service``, ``spinegate.inference``,
``spinegate.biomech`` and ``spinegate.dicom_io``.
"""
from spinegate.service.version import __version__

__all__ = ["__version__"]
