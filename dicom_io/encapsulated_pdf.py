"""A PDF report as a DICOM Encapsulated PDF (PS3.3 A.45.1) of the source
study, built on highdicom's `SOPClass` (Patient, General Study, series,
equipment and SOP Common modules copied from a source instance).

Document Title and Concept Name say what it is (LOINC 18756-7 "MRI Spine
Report", CID 7000); the source instances it was derived from are listed in
Source Instance Sequence.
"""
from __future__ import annotations

import datetime
from typing import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian

from spinegate.dicom_io.charset import declare_character_set

__all__ = ["ENCAPSULATED_PDF_STORAGE", "build_encapsulated_pdf"]

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return item


def build_encapsulated_pdf(
    pdf: bytes, sources: Sequence[Dataset], series_instance_uid: str, sop_instance_uid: str, series_number: int,
    document_title: str, series_description: str, software_version: str,
) -> hd.SOPClass:
    """Encapsulate ``pdf`` in the study of ``sources``.

    Parameters
    ----------
    pdf : bytes
        A complete PDF document.
    sources : sequence of pydicom.dataset.Dataset
        The instances the report was derived from (headers suffice); the
        first gives the patient and study.

    Raises
    ------
    ValueError
        If ``pdf`` is not a PDF, ``sources`` is empty or spans studies.
    """
    if not pdf.startswith(b"%PDF-"):
        raise ValueError("'pdf' does not start with a PDF header (%PDF-)")
    if not sources:
        raise ValueError("'sources' is empty: a report is derived from the study's instances")
    studies = {str(ds.StudyInstanceUID) for ds in sources}
    if len(studies) != 1:
        raise ValueError(f"'sources' span {len(studies)} studies")
    now = datetime.datetime.now()
    doc = hd.SOPClass(
        study_instance_uid=studies.pop(), series_instance_uid=series_instance_uid, series_number=series_number,
        sop_instance_uid=sop_instance_uid, sop_class_uid=ENCAPSULATED_PDF_STORAGE, instance_number=1, modality="DOC",
        manufacturer="spinegate", transfer_syntax_uid=ExplicitVRLittleEndian, series_description=series_description[:64],
        software_versions=software_version, content_date=now.date(), content_time=now.time(),
    )
    doc.copy_patient_and_study_information(sources[0])
    doc.ConversionType = "WSD"  # SC Equipment: made on a workstation
    doc.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    doc.BurnedInAnnotation = "YES"  # the patient's name and IDs are printed in the report
    doc.DocumentTitle = document_title[:64]
    doc.ConceptNameCodeSequence = [_code_item(codes.LN.MRISpineReport)]
    doc.VerificationFlag = "UNVERIFIED"
    doc.MIMETypeOfEncapsulatedDocument = "application/pdf"
    refs = []
    for ds in sources:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        ref.PurposeOfReferenceCodeSequence = [_code_item(codes.DCM.SourceImageForImageProcessingOperation)]
        refs.append(ref)
    doc.SourceInstanceSequence = refs
    doc.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    doc.EncapsulatedDocumentLength = len(pdf)
    declare_character_set(doc)
    return doc
