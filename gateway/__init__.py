"""dicom-gateway: DICOM in object storage, served over DICOMweb behind time-limited tokens."""

__version__ = "0.1.0"
