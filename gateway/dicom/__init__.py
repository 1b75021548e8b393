"""DICOM parsing done once at ingest: frame and bulkdata index, DICOM JSON metadata, QIDO attributes."""
