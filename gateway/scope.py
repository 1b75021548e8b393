"""What a credential may see: whole studies, or some series of one study. ``None`` scope = API key (admin)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scope:
    studies: frozenset[str]
    # None: every series of ``studies``; otherwise only these series (then ``studies`` holds exactly one UID)
    series: frozenset[str] | None = None

    def allows_study(self, study: str) -> bool:
        """True when the whole study is visible (study-level retrieve, study metadata)."""
        return study in self.studies and self.series is None

    def touches_study(self, study: str) -> bool:
        """True when at least part of the study is visible (QIDO on its series, series-level paths)."""
        return study in self.studies

    def allows_series(self, study: str, series: str) -> bool:
        return study in self.studies and (self.series is None or series in self.series)

    def intersect(self, other: Scope) -> Scope:
        """What both scopes allow (a request carrying two tokens gets no more than either)."""
        if self.series is None:
            series = other.series
        elif other.series is None:
            series = self.series
        else:
            series = self.series & other.series
        return Scope(self.studies & other.studies, series)
