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

It also teaches pydicom Latin alphabet No. 9 (``ISO_IR 203``, PS3.3 Table C.12-2; ``ISO 2022 IR 203`` with code
extensions, escape sequence ESC 02/13 06/02, Table C.12-3), the Latin-1 successor with the euro sign and the
Š, Ž, Œ of Estonian, Finnish and French names: pydicom 3.0 does not know it and decoded such text as the
default repertoire (Š as ¦), so a name was stored, searched and scanned for PHI misspelt.
"""

import logging as _logging
import warnings as _warnings

from pydicom import charset as _pydicom_charset
from pydicom import config as _pydicom_config

_pydicom_config.settings.reading_validation_mode = _pydicom_config.IGNORE
_warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
_logging.getLogger("pydicom").propagate = False  # its own NullHandler only

_pydicom_charset.python_encoding.setdefault("ISO_IR 203", "iso8859_15")
_pydicom_charset.python_encoding.setdefault("ISO 2022 IR 203", "iso8859_15")
_pydicom_charset.CODES_TO_ENCODINGS.setdefault(_pydicom_charset.ESC + b"-b", "iso8859_15")
_pydicom_charset.ENCODINGS_TO_CODES.setdefault("iso8859_15", _pydicom_charset.ESC + b"-b")
