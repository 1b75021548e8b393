"""The gunicorn settings module of ``stack up`` (``gunicorn -c python:gateway.gunicorn_master``). It sets nothing
(the stack passes its settings as flags): it imports the gateway's modules in gunicorn's master, before the master
forks its workers, so a worker starts with pydicom, numpy, SQLAlchemy, Flask and boto3 already imported (about
0.65 s of CPU each, paid once per stack instead of once per worker and again per replaced worker) and shares their
memory pages with the master. Importing starts nothing: no app, engine, thread or connection exists before the fork;
each worker builds its own app (``gateway.wsgi``). The container's master imports the same modules through
``prepare`` in ``on_starting`` (``docker/gunicorn.conf.py``)."""

import gateway.app  # noqa: F401
