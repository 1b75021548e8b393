"""gunicorn entry point: ``gunicorn gateway.wsgi:application``. Settings come from DICOMGW_* variables."""

from gateway.app import create_wsgi

application = create_wsgi()
