"""Flask blueprints: health, the server-to-server API, and the DICOMweb endpoints Python answers itself."""
