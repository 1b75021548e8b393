"""``PhiHook``: scan, choose the policy rule, act. The same object runs for STOW-RS and for direct S3 uploads.

Decisions (``HookOutcome.audit["decision"]``):

- ``reject`` / ``quarantine``: as the rule says.
- ``deidentify``: a new file is written next to the upload (or in ``tmp_dir``) and re-scanned with the policy;
  only a clean re-scan is accepted (``path`` = the new file, which the caller then owns and deletes). Anything
  else, or a file that cannot be de-identified, gets ``[options].on_deidentify_failure`` (reject by default).
  When the re-scan's only finding is burned-in text and the rule says ``pixels = "clean"``, the pixels are
  cleaned (``pixelclean``) and the cleaned file re-scanned; ``pixels = "review"`` quarantines the de-identified
  file with the text regions found; a file whose encoding cannot be re-encoded honestly goes to review too.
- ``allow``: the file is stored as it is, so the destination must have ``identifiable_allowed = true``; if the
  scan found PHI the destination's region must also equal the upload's declared region. Otherwise: reject.
- ``route``: a clean file may go to the named destination; a file with PHI only if that destination allows
  identifiable data AND is in the upload's declared region (an upload that declares no region cannot prove
  it).
- Unreadable or malformed files: ``[options].on_unreadable`` (reject by default), never an exception.

The audit dict names tags, rules and destinations, never values.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from gateway.config import Settings
from gateway.errors import ConfigError, DeidentificationFailed
from gateway.hooks import HookOutcome, UploadContext
from gateway.phi.deidentify import deidentify_file
from gateway.phi.pixelclean import process
from gateway.phi.pixelfile import CannotClean
from gateway.phi.pixels import check_ocr, identifier_terms
from gateway.phi.policy import Destination, Policy, Rule, load_policy
from gateway.phi.scanner import ScanReport, read_dataset, scan_file, scan_with_values
from gateway.phi.textrules import identifier_values
from gateway.spool import spool_prefix

MIN_KEY_LENGTH = 32
BURNED_IN_RULE = "burned-in-annotation"


class PhiHook:
    """The PHI / data-sovereignty upload hook (implements ``gateway.hooks.Hook``)."""

    name = "phi"

    def __init__(
        self,
        policy: Policy,
        deid_key: str | bytes = "",
        destination_storages: Mapping[str, Any] | None = None,
        tmp_dir: Path | str | None = None,
    ) -> None:
        """``destination_storages``: when given, the destinations that are actually configured (name ->
        storage); a rule that sends a file anywhere else is refused instead of falling back to the default."""
        self.policy = policy
        self.deid_key = deid_key
        self.destination_storages = destination_storages
        self.tmp_dir = Path(tmp_dir) if tmp_dir else None

    # -- outcome builders
    def _outcome(
        self,
        action: str,
        decision: str,
        rule: Rule | None,
        report: ScanReport,
        reason: str = "",
        path: Path | None = None,
        destination: str | None = None,
        **audit: Any,
    ) -> HookOutcome:
        outcome_action = {"accept": "accept", "reject": "reject", "quarantine": "quarantine"}[action]
        return HookOutcome(
            action=outcome_action,  # type: ignore[arg-type]
            path=path,
            destination=destination,
            reason=reason,
            report=report.to_dict(),
            audit={
                "hook": self.name,
                "decision": decision,
                "rule": rule.id if rule else None,
                "rule_action": rule.action if rule else None,
                "tags": report.paths,  # tag paths, never values
                "scan": report.status,
                "policy_version": self.policy.version,
                "destination": destination,
                **audit,
            },
        )

    def _refuse(self, rule: Rule, report: ScanReport, reason: str, choice: str = "reject") -> HookOutcome:
        return self._outcome(choice, choice, rule, report, reason=reason)

    # -- the hook
    def __call__(self, path: Path, context: UploadContext, dataset: Dataset | None = None) -> HookOutcome:
        outcome = self._judge(Path(path), context, dataset)
        return self._hold(outcome, context) if outcome.action == "quarantine" else outcome

    def holding_place(self, context: UploadContext) -> Destination | None:
        """Where a held file of an upload from ``context`` may be: a file is held because nobody could show it
        carries no PHI (an identifiable original the de-identifier could not clean, a file with burned-in text),
        so only a configured destination that allows identifiable data in the upload's declared region will do.
        The gateway's own storage ("default") first, then the policy's order; None if there is no such place."""
        if context.region is None:
            return None
        places = [
            destination
            for destination in self.policy.destinations.values()
            if destination.identifiable_allowed
            and destination.region == context.region
            and (self.destination_storages is None or destination.name in self.destination_storages)
        ]
        places.sort(key=lambda destination: destination.storage != "default")  # stable: the policy's order after
        return places[0] if places else None

    def _hold(self, outcome: HookOutcome, context: UploadContext) -> HookOutcome:
        """A quarantine held where the policy lets identifiable data of the upload's region be, else refused (fail
        closed, as a reject: identifiable data at rest in a place the policy forbids is what it exists to stop)."""
        place = self.holding_place(context)
        if place is None:
            outcome.action = "reject"
            outcome.reason = f"{outcome.reason}; but {_held_nowhere(context)}"
            outcome.audit["decision"] = "reject"
            return outcome
        outcome.destination = place.name
        outcome.audit["destination"] = place.name
        return outcome

    def approve(self, path: Path, context: UploadContext) -> HookOutcome:
        """A held file a reviewer released, judged by the policy as its upload (``context``) would have been with
        that approval: the ``quarantine`` rules are passed over (the review they ask for is done) and burned-in text
        is no longer a finding (the reviewer looked at the pixels); every other finding is still PHI, which goes
        only where identifiable data of the upload's region may be. The file is stored as it is held (a file the
        gateway de-identified for pixel review is not de-identified again): ``accept`` with the destination, or
        ``reject`` with the reason. A ``[default]`` that quarantines sends it where the file was held."""
        path = Path(path)
        report, tags = scan_with_values(path, self.policy, self.policy.tag_keywords)
        rule = self.policy.select(context, tags, not report.clean, reviewed=True)
        # unreadable: nobody can show it carries no PHI (fail closed)
        phi = not report.readable or any(finding.rule != BURNED_IN_RULE for finding in report.findings)
        if rule.action == "reject":
            reason = rule.reason or f"policy rule {rule.id!r}: reject"
            return self._outcome("reject", "reject", rule, report, reason=reason, released=True)
        if rule.action == "quarantine":
            place = self.holding_place(context)
            if place is None:
                return self._outcome(
                    "reject", "reject", rule, report, reason=_held_nowhere(context), released=True
                )
            destination = place
        else:
            assert rule.destination is not None  # validated at load for allow, route and deidentify
            destination = self.policy.destinations[rule.destination]
        if self.destination_storages is not None and destination.name not in self.destination_storages:
            return self._refuse(rule, report, f"destination {destination.name!r} is not configured")
        problem = _identifiable_problem(destination, context) if phi else None
        if rule.action == "allow" and not destination.identifiable_allowed:
            problem = f"destination {destination.name!r} does not accept identifiable data"
        if problem:
            return self._outcome("reject", "reject", rule, report, reason=problem, released=True)
        return self._outcome("accept", "release", rule, report, destination=destination.name, released=True)

    def _judge(self, path: Path, context: UploadContext, dataset: Dataset | None) -> HookOutcome:
        report, tags = scan_with_values(path, self.policy, self.policy.tag_keywords, dataset)
        if not report.readable:
            choice = self.policy.on_unreadable
            return self._outcome(choice, choice, None, report, reason=f"unreadable DICOM: {report.error}")
        phi = not report.clean
        rule = self.policy.select(context, tags, phi)
        if rule.action in ("reject", "quarantine"):
            reason = rule.reason or f"policy rule {rule.id!r}: {rule.action}"
            return self._outcome(rule.action, rule.action, rule, report, reason=reason)
        assert rule.destination is not None  # validated at load for allow, route and deidentify
        destination = self.policy.destinations[rule.destination]
        if self.destination_storages is not None and destination.name not in self.destination_storages:
            return self._refuse(rule, report, f"destination {destination.name!r} is not configured")
        if rule.action == "deidentify":
            return self._deidentify(path, rule, report, dataset)
        if rule.action == "allow" and not destination.identifiable_allowed:
            return self._refuse(
                rule, report, f"destination {destination.name!r} does not accept identifiable data"
            )
        if phi:
            problem = _identifiable_problem(destination, context)
            if problem:
                return self._refuse(rule, report, problem)
        return self._outcome("accept", rule.action, rule, report, destination=destination.name)

    def _deidentify(self, path: Path, rule: Rule, report: ScanReport, dataset: Dataset | None) -> HookOutcome:
        choice = self.policy.on_deidentify_failure
        # the output is re-scanned against the original's names and IDs too: its own are emptied, and an element
        # the profile keeps (StationName, DeviceSerialNumber...) may still repeat them
        known = identifier_values(dataset if dataset is not None else read_dataset(path))
        # named for this process, so that what it leaves if killed mid-write is swept (gateway.spool)
        handle, name = tempfile.mkstemp(prefix=spool_prefix("deid"), suffix=".dcm", dir=self.tmp_dir or path.parent)
        os.close(handle)
        output = Path(name)
        try:
            deidentify_file(path, output, self.deid_key, self.policy)
        except DeidentificationFailed as exc:
            output.unlink(missing_ok=True)
            return self._refuse(rule, report, f"cannot de-identify: {exc.detail}", choice)
        except Exception as exc:  # noqa: BLE001 - a malformed file must give an outcome, never an exception
            output.unlink(missing_ok=True)
            return self._refuse(rule, report, f"cannot de-identify: {type(exc).__name__}", choice)
        rescan = scan_file(output, self.policy, known)
        if rule.pixels != "refuse" and rescan.findings and {f.rule for f in rescan.findings} == {BURNED_IN_RULE}:
            return self._pixels(path, output, rule, report, known)
        if not rescan.clean:
            output.unlink(missing_ok=True)
            return self._outcome(
                choice,
                choice,
                rule,
                report,
                reason="de-identified output still has PHI: "
                + ", ".join(sorted({f.rule for f in rescan.findings})),
                rescan_paths=rescan.paths,
            )
        return self._outcome(
            "accept", "deidentify", rule, report, path=output, destination=rule.destination, deidentified=True
        )

    def _pixels(
        self, path: Path, deidentified: Path, rule: Rule, report: ScanReport, known: tuple[list[str], list[str]]
    ) -> HookOutcome:
        """Clean or review the burned-in text of a file whose header is already de-identified."""
        choice = self.policy.on_deidentify_failure
        options = self.policy.pixels
        cleaned = deidentified.with_name(deidentified.stem + "-pixels.dcm") if rule.pixels == "clean" else None
        key = self.deid_key.encode("utf-8") if isinstance(self.deid_key, str) else self.deid_key
        try:
            terms = identifier_terms(read_dataset(path)) if rule.pixels_match == "identifiers" else None
            result = process(deidentified, cleaned, options, terms, key)
        except CannotClean as exc:
            # never stored uncleaned: an admin looks at the (header de-identified) file
            if cleaned is not None:
                cleaned.unlink(missing_ok=True)
            outcome = self._outcome(
                "quarantine", "quarantine", rule, report, reason=f"pixels need review: {exc}", path=deidentified
            )
            outcome.report["pixels"] = {"regions": None, "error": str(exc)}
            return outcome
        except Exception as exc:  # noqa: BLE001 - OCR missing or failing: fail closed, with an outcome
            deidentified.unlink(missing_ok=True)
            if cleaned is not None:
                cleaned.unlink(missing_ok=True)
            return self._refuse(rule, report, f"cannot clean the pixels: {type(exc).__name__}", choice)
        if cleaned is None:
            outcome = self._outcome(
                "quarantine",
                "quarantine",
                rule,
                report,
                reason=f"pixels need review: {len(result.regions)} text regions found",
                path=deidentified,
                pixel_regions=len(result.regions),
            )
            outcome.report["pixels"] = result.to_dict()
            return outcome
        deidentified.unlink(missing_ok=True)
        rescan = scan_file(cleaned, self.policy, known)
        if not rescan.clean:
            cleaned.unlink(missing_ok=True)
            return self._outcome(
                choice,
                choice,
                rule,
                report,
                reason="cleaned output still has PHI: " + ", ".join(sorted({f.rule for f in rescan.findings})),
                rescan_paths=rescan.paths,
            )
        outcome = self._outcome(
            "accept",
            "deidentify",
            rule,
            report,
            path=cleaned,
            destination=rule.destination,
            deidentified=True,
            pixels_cleaned=True,
            pixel_regions=len(result.regions),
        )
        outcome.report["pixels"] = result.to_dict()
        return outcome


def _held_nowhere(context: UploadContext) -> str:
    where = "an upload that declares no region" if context.region is None else f"region {context.region!r}"
    return f"no destination may hold identifiable data from {where}"


def _identifiable_problem(destination: Destination, context: UploadContext) -> str | None:
    if not destination.identifiable_allowed:
        return f"identifiable data may not go to destination {destination.name!r}"
    if context.region is None:
        return f"identifiable data needs a declared region to go to destination {destination.name!r}"
    if context.region != destination.region:
        return (
            f"identifiable data from region {context.region!r} may not go to destination "
            f"{destination.name!r} in region {destination.region!r}"
        )
    return None


def load_checked_policy(settings: Settings) -> Policy | None:
    """The PHI policy of these settings (None without ``DICOMGW_PHI_POLICY``), loaded and validated once; a policy
    that de-identifies needs ``DICOMGW_DEID_KEY`` (at least 32 characters). ``Services`` builds the hook from it."""
    if settings.phi_policy is None:
        return None
    policy = load_policy(settings.phi_policy)
    if policy.needs_key and len(settings.deid_key) < MIN_KEY_LENGTH:
        raise ConfigError(
            "DICOMGW_DEID_KEY",
            f"the PHI policy de-identifies, so a key of at least {MIN_KEY_LENGTH} characters is required",
        )
    if policy.needs_ocr:
        check_ocr()  # fail at start-up, not on the first ultrasound
    return policy
