"""Developer tools, apart from the service: the local stack runner (``stack``), demo seeding (``seed``), the NGINX
template renderer for the local stack and the tests (``nginxconf``), the STOW upload client (``upload``) and
synthetic DICOM (``synth``). The CLI (``gateway.cli``) uses them; no service module imports them
(tests/unit/test_layering.py)."""
