"""DICOMweb (PS3.18) wire formats and transactions: QIDO-RS, WADO-RS, STOW-RS.

``multipart`` streams ``multipart/related`` bodies part by part into spool files; ``stow_response`` builds the
Store Instances Response (PS3.18 10.5.3, Annex I) from per-instance ingest results.
"""
