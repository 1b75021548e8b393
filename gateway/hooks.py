"""The upload hook chain: ordered hooks that run on every file before it becomes visible.

A hook sees the spooled file and the upload context and returns an outcome: accept (optionally with a modified
file and a destination), reject (a STOW failure with a reason), or quarantine. Hooks run in order; the first
that does not accept ends the chain. The same chain runs for STOW-RS and for direct-to-bucket uploads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

Action = Literal["accept", "reject", "quarantine"]


@dataclass(frozen=True)
class UploadContext:
    source: Literal["stow", "s3-event", "cli"]
    sub: str | None = None  # who uploaded (token sub, or "api-key")
    tenant: str | None = None  # X-DICOMGW-Tenant header / object metadata
    region: str | None = None  # declared region of origin (X-DICOMGW-Region header / object metadata)


@dataclass
class HookOutcome:
    action: Action = "accept"
    # the file to continue with (a hook that de-identifies writes a new file and returns it)
    path: Path | None = None
    # name of the destination (policy) the file must be written to; None = the default storage
    destination: str | None = None
    reason: str = ""
    # a JSON-able report (PHI findings: tag paths, keywords, rules; never values)
    report: dict[str, Any] = field(default_factory=dict)
    # audit fields recorded in the catalog for every file the chain saw
    audit: dict[str, Any] = field(default_factory=dict)


class Hook(Protocol):
    name: str

    def __call__(self, path: Path, context: UploadContext, dataset: Dataset | None = None) -> HookOutcome:
        """``dataset``: pydicom's reading of ``path`` as ingest's index made it (values over 1 KB still on disk),
        when ``path`` is the file that was indexed, so a hook need not parse it again; read-only."""
        ...
