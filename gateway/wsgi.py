"""gunicorn entry point: ``gunicorn gateway.wsgi:application``. Settings come from DICOMGW_* variables.

Workers never migrate the catalog: ``gateway.startup.prepare`` did it once before they started (``stack up``,
the container's ``on_starting``, or ``dicom-gateway db upgrade``); a worker only checks the schema is current.
"""

import sys
from typing import Any

from gateway.app import create_wsgi
from gateway.errors import ConfigError, GatewayError


def _load() -> Any:
    try:
        return create_wsgi(migrate=False)
    except (ConfigError, GatewayError) as error:
        # One readable line instead of a traceback. A wrong setting or schema will not mend itself: exit status 4
        # is gunicorn's "App failed to load", which stops the master instead of respawning forever. A database or
        # storage that is briefly out (say while gunicorn replaces a worker) may: exit 1, and the master retries.
        print("dicom-gateway: " + " ".join(str(error).split()), file=sys.stderr, flush=True)
        raise SystemExit(4 if isinstance(error, ConfigError) else 1) from None


application = _load()
