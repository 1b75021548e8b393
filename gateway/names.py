"""How the gateway shows a file's name in what it prints or stores."""

from __future__ import annotations

import os


def shown_path(path: str | os.PathLike[str]) -> str:
    """A file's name as text: a byte that is no UTF-8 (a name written by another system) as ``\\xff``. Python holds
    it as the surrogate escape ``\\udcff``, which was printed so (or refused by stdout), and which no catalog column
    stores (``audit collect --log`` of such a name was a traceback)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
