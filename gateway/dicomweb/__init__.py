"""DICOMweb (PS3.18): the whole protocol in one folder, free of SQL and of Flask.

- ``paths``: the URL grammar (``/dicomweb/studies/{uid}/series/{uid}/...``) parsed into a ``Target``, refusing
  anything ambiguous; the auth decision and the read plans both start from it.
- ``accept``: Accept header parsing and media-type negotiation (the ``accept`` query parameter wins).
- ``wado``: WADO-RS/WADO-URI read plans (Range parsing, SSI bodies and ``X-Accel-Redirect`` that NGINX executes).
- ``qido``: QIDO-RS query parameters parsed into a ``QidoQuery`` (the SQL is ``gateway.catalog.search``).
- ``multipart``: streaming ``multipart/related`` parser and encoder; ``stow`` and ``stow_response``: STOW-RS and
  the Store Instances Response (PS3.18 10.5.3, Annex I).
"""
