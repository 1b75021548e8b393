"""PHI scanning, de-identification and the data-sovereignty policy, as upload hooks (see docs/phi.md)."""

from gateway.phi.deidentify import DeidResult, deidentify_file
from gateway.phi.hook import PhiHook, load_checked_policy
from gateway.phi.policy import Policy, load_policy, parse_policy
from gateway.phi.scanner import Finding, ScanReport, scan_file

__all__ = [
    "DeidResult",
    "Finding",
    "PhiHook",
    "Policy",
    "ScanReport",
    "deidentify_file",
    "load_checked_policy",
    "load_policy",
    "parse_policy",
    "scan_file",
]
