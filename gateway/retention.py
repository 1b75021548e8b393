"""Retention: remove instances older than the policy file's ``[retention]`` allows (`docs/phi.md`, README
"Lifecycle"). ``dicom-gateway retention run [--dry-run]``, docker-compose's ``retention`` service and the Terraform
EventBridge schedule (``gateway.lambda_handler.retention``) all call ``run``.

An instance's days come from its upload's tenant, else its policy destination, else ``[retention] days``. A
study whose every instance expired is removed as a study (one deletion record), otherwise the expired instances
one by one; either way through ``gateway.lifecycle.Deleter``, with the same guarantees and audit as a DELETE
(``sub`` is ``retention``, the reason names the rule).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from gateway.catalog import Catalog
from gateway.catalog.deletions import Target
from gateway.config import Settings
from gateway.lifecycle import Deleter, summary
from gateway.phi.policy import Retention
from gateway.storage import open_storage

DAY = 86400
RETENTION_SUB = "retention"  # who removed it, in the deletion records and the audit


def expired(catalog: Catalog, retention: Retention, now: int) -> list[tuple[Target, str]]:
    """What retention removes at ``now``: (target, reason) pairs, whole studies where every instance expired."""
    spans = [retention.days, *retention.destinations.values(), *retention.tenants.values()]
    shortest = min((d for d in spans if d is not None), default=None)
    if shortest is None:
        return []
    by_study: dict[str, list[tuple[Any, int]]] = defaultdict(list)
    for row in catalog.stored_before(now - shortest * DAY):
        days = retention.days_for(row.tenant, row.destination)
        if days is not None and row.created_at <= now - days * DAY:
            by_study[row.study_uid].append((row, days))
    found: list[tuple[Target, str]] = []
    for study, rows in sorted(by_study.items()):
        if len(rows) == rows[0][0].study_instances:
            longest = max(days for _, days in rows)
            # bounded by the newest instance chosen: one uploaded into the study during the run stays
            newest = max(row.created_at for row, _ in rows)
            found.append((Target(study, stored_until=newest), f"retention: older than {longest} days"))
        else:
            found += [
                (
                    Target(study, row.series_uid, row.sop_uid, stored_until=row.created_at),
                    f"retention: older than {days} days",
                )
                for row, days in rows
            ]
    return found


def finish_stopped_runs(catalog: Catalog, settings: Settings) -> list[dict[str, Any]]:
    """Finish the deletions a run stopped in its settle wait left (Ctrl-C, SIGTERM, a Lambda's timeout): hidden,
    they are no longer ``expired``, so their objects stayed in storage until a ``reconcile --repair``. A record
    younger than the settle time is waited for, as a DELETE's retry waits (it may be another run's, still waiting:
    removing objects twice is harmless)."""
    ours = [record for record in catalog.unfinished_deletions() if record["sub"] == RETENTION_SUB]
    if not ours:
        return []
    deleter = Deleter(catalog, open_storage(settings.storage_url), settings.delete_settle)
    deleter.sleep(max(0.0, max(record["created_at"] for record in ours) + deleter.settle - time.time()))
    return deleter.finish_unfinished(older_than=int(time.time()), sub=RETENTION_SUB)


def run(settings: Settings, *, dry_run: bool, now: int | None = None) -> dict[str, Any]:
    """Apply the policy's retention once. ``dry_run`` lists what would go and removes nothing."""
    from gateway.phi.policy import load_policy

    # parsed only: retention needs neither the de-identification key nor OCR
    retention = load_policy(settings.phi_policy).retention if settings.phi_policy else Retention()
    catalog = Catalog(settings.database_url)
    try:
        catalog.require_current_schema(then="before running retention")  # no workers start here
        finished = [] if dry_run else finish_stopped_runs(catalog, settings)
        targets = expired(catalog, retention, int(time.time()) if now is None else now)
        report: dict[str, Any] = {
            "configured": retention.configured,
            "dry_run": dry_run,
            "would_remove" if dry_run else "removed": [
                {"study_uid": t.study, "series_uid": t.series, "sop_uid": t.sop, "reason": reason}
                for t, reason in targets
            ],
        }
        if finished:
            report["finished_deletions"] = finished
        if dry_run or not targets:
            return report
        deleter = Deleter(catalog, open_storage(settings.storage_url), settings.delete_settle)
        removed = []
        # one deletion call per reason, so each record says why; the settle wait is paid once per reason
        by_reason: dict[str, list[Target]] = defaultdict(list)
        for target, reason in targets:
            by_reason[reason].append(target)
        for reason, group in sorted(by_reason.items()):
            removed += deleter.delete(group, sub=RETENTION_SUB, reason=reason)
        report.update(summary(removed))
        return report
    finally:
        catalog.close()
