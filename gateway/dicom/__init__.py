"""DICOM parsing done once at ingest: frame and bulkdata index, DICOM JSON metadata, QIDO attributes.

Importing this package keeps pydicom from writing a file's values into any log, for the whole process (every
process of the gateway that reads a data set imports it: gunicorn's workers, the ingest pool, the derivative
worker, the commands). pydicom's reading validation (default: warn) quotes the offending value into a Python
warning and a log record (``Invalid value for VR CS: 'DOE^JOHN'``), and so do its other warnings about a file
(``Unknown encoding '...'`` quotes the Specific Character Set as written): a value that breaks its VR may be a
patient's name a modality wrote in the wrong element, and the hooks, the renderer and the derivative worker decode
values outside ``walker.quiet_validation()``. So validation is off, pydicom's warnings are ignored and its log
records stay in its own logger; the gateway says what it did with such a value itself, naming only the tag.
Values that cannot be converted at all still raise.
"""

import logging as _logging
import warnings as _warnings

from pydicom import config as _pydicom_config

_pydicom_config.settings.reading_validation_mode = _pydicom_config.IGNORE
_warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
_logging.getLogger("pydicom").propagate = False  # its own NullHandler only
