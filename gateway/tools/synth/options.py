"""Options the synth commands share."""

from __future__ import annotations

import click


def patient_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--patient`` as a Patient ID (0010,0020) can hold: LO, 1-64 characters, no backslash (it would make two
    values) and no control character. A longer one was written as given, with a pydicom warning: a file that is no
    valid DICOM, which `dciodvfy` and the gateway's own checks then meet as the synthetic data's fault."""
    if value is None:
        return None
    if not 1 <= len(value) <= 64 or "\\" in value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise click.BadParameter("a Patient ID is 1-64 characters, no backslash and no control character")
    return value
