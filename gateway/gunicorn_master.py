"""The gunicorn settings module of ``stack up`` (``gunicorn --config python:gateway.gunicorn_master``). It sets
nothing (the stack passes its settings as flags, which win over a settings module): it imports the gateway's
modules in gunicorn's master, before the master forks its workers, so a worker starts with pydicom, numpy,
SQLAlchemy and Flask already imported (about 0.65 s of CPU each, paid once per stack instead of once per worker and
again per replaced worker) and shares their memory pages with the master. Importing starts nothing: no app, engine,
connection or Python thread exists before the fork (numpy's OpenBLAS threads stop themselves around a fork); each
worker builds its own app (``gateway.wsgi``). So a reload by SIGHUP would keep the code the master imported:
``stack up`` never sends one (it is stopped and started). Given ``--config``, gunicorn reads no ``gunicorn.conf.py``
from the folder it runs in. The container's master imports the same modules through ``prepare`` in
``on_starting`` (``docker/gunicorn.conf.py``)."""

import gateway.app  # noqa: F401
from gateway.gunicorn_worker import on_exit  # noqa: F401 - gunicorn's hook, read from this module
