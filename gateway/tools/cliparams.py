"""Click parameter types shared by the command-line tools."""

from __future__ import annotations

from typing import Any

import click


class GivenPath(click.Path):
    """``click.Path`` that refuses an empty value: ``""`` was read as the current folder (``stack up --var ""`` made
    a stack there, ``synth ct --out ""`` wrote into it, ``scan ""`` scanned it), a usage error here as in ``upload``."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path names no file or folder", param, ctx)
        return super().convert(value, param, ctx)


class GivenURL(click.ParamType):
    """A URL option that refuses an empty value, as ``GivenPath`` refuses an empty path: ``token issue --url ""``
    printed links on the default URL, as if no ``--url`` had been given, and ``stack seed --url ""`` wrote the
    synthetic studies and then failed on "Invalid URL '/dicomweb/studies'"."""

    name = "url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("an empty URL names no gateway", param, ctx)
        return value

