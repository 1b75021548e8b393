"""PHI scanning, de-identification and the data-sovereignty policy, as upload hooks (see docs/phi.md)."""

from gateway.phi.deidentify import DeidResult, deidentify_file
from gateway.phi.hook import PhiHook, build_hooks
from gateway.phi.policy import Policy, load_policy, parse_policy
from gateway.phi.scanner import Finding, ScanReport, scan_file

__all__ = [
    "DeidResult",
    "Finding",
    "PhiHook",
    "Policy",
    "ScanReport",
    "build_hooks",
    "deidentify_file",
    "load_policy",
    "parse_policy",
    "scan_file",
]
