"""Seeding the demo: synthetic studies generated once into ``var/seed`` and sent through STOW-RS (the real ingest
path, through NGINX), then tokens issued through the API, exactly as a portal would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydicom
import requests

from gateway.config import ConfigError, env_int
from gateway.dicomweb.multipart import encode_multipart
from gateway.tools.stack import Stack, StackError, own_certificate


class Target:
    """Where to seed: a gateway URL (through NGINX) and an API key."""

    def __init__(self, url: str, api_key: str, work_dir: Path) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.var_dir = work_dir


CT_SLICES = 60
WSI_FRAMES = 2048


def _generate(seed_dir: Path) -> dict[str, Any]:
    from gateway.tools.synth import make_series, make_wsi

    ct = make_series(seed_dir / "ct", modality="CT", slices=CT_SLICES, seed=1, clean=True)
    wsi = make_wsi(seed_dir / "wsi", frames=WSI_FRAMES, seed=2, clean=True)
    first = pydicom.dcmread(ct[0], stop_before_pixels=True)
    slide = pydicom.dcmread(wsi, stop_before_pixels=True)
    return {
        "ct_study": str(first.StudyInstanceUID),
        "wsi_study": str(slide.StudyInstanceUID),
        "files": [str(p) for p in [*ct, wsi]],
    }


def _stow(stack: Stack | Target, files: list[str]) -> None:
    """One STOW-RS request for every file (the upload client's multipart encoder, streamed from disk)."""
    body = encode_multipart([Path(name) for name in files])
    headers = {
        "Authorization": f"Bearer {stack.api_key}",
        "Content-Type": body.content_type,
        "Accept": "application/dicom+json",
    }
    # verify=False: the stack's own self-signed certificate under --tls
    url = f"{stack.url}/dicomweb/studies"
    with own_certificate():
        answer = requests.post(url, data=body, headers=headers, timeout=600, verify=False)  # noqa: S501
    if answer.status_code != 200:
        raise _refused(answer, len(files)) or _failed("the STOW-RS upload", answer)


def _refused(answer: requests.Response, sent: int) -> StackError | None:
    """A STOW answer that stored not every file, said as its first failure's reason (the answer's JSON cut at 300
    characters never reached it) and the way to start anyway: a PHI policy (DICOMGW_PHI_POLICY) refuses the demo's
    fake PHI. None when the answer is no STOW response."""
    try:
        failed = answer.json().get("00081198", {}).get("Value") or []
        code = int(failed[0]["00081197"]["Value"][0])
        reason = str(failed[0].get("00091001", {}).get("Value", [""])[0])
    except (ValueError, AttributeError, LookupError, TypeError):
        return None
    return StackError(
        f"seeding failed: the STOW-RS upload answered {answer.status_code}: {len(failed)} of {sent} demo files not "
        f"stored, the first 0x{code:04X} {' '.join(reason.split())[:200]}; `stack up --no-seed` starts without them"
    )


DEMO_TTL = 3600  # an hour to try the printed links


def demo_ttl(stack: Stack | Target) -> int:
    """An hour, or the gateway's DICOMGW_TOKEN_MAX_TTL when lower: a longer token is refused, and seeding with it
    stopped `DICOMGW_TOKEN_MAX_TTL=600 stack up` (the variable as the stack gives it to gunicorn, or as compose gives
    it to `stack seed`)."""
    env = stack.gateway_env() if isinstance(stack, Stack) else None
    try:
        return min(DEMO_TTL, env_int("TOKEN_MAX_TTL", env))
    except ConfigError:  # the gateway refused to start with it: nothing is seeded anyway
        return DEMO_TTL


def issue(stack: Stack | Target, study: str, ttl: int | None = None) -> dict[str, Any]:
    with own_certificate():
        answer = requests.post(
            f"{stack.url}/api/v1/tokens",
            json={"sub": "demo", "studies": [study], "actions": ["read"], "ttl": ttl or demo_ttl(stack)},
            headers={"Authorization": f"Bearer {stack.api_key}"},
            timeout=30,
            verify=False,  # noqa: S501 - the stack's own self-signed certificate
        )
    if answer.status_code != 201:
        raise _failed("issuing a token", answer)
    result: dict[str, Any] = answer.json()
    return result


def _failed(step: str, answer: requests.Response) -> StackError:
    text = " ".join(answer.text.split())[:300]
    return StackError(f"seeding failed: {step} answered {answer.status_code}: {text}")


def seed_demo(stack: Stack | Target) -> dict[str, str]:
    """Store the demo studies and issue their tokens; any failure is a ``StackError`` with one readable line."""
    try:
        return _seed(stack)
    except (requests.RequestException, OSError, ValueError) as error:  # unreachable, unreadable seed, bad JSON
        raise StackError(f"seeding failed: {type(error).__name__}: {' '.join(str(error).split())[:300]}") from None


def _seed(stack: Stack | Target) -> dict[str, str]:
    seed_dir = stack.var_dir / "seed"
    manifest_path = seed_dir / "seed.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
    else:
        manifest = _generate(seed_dir)
        manifest_path.write_text(json.dumps(manifest, indent=2))
    # STOW is idempotent: a second run re-sends the same bytes and nothing is duplicated.
    _stow(stack, manifest["files"])
    ct = issue(stack, manifest["ct_study"])
    wsi = issue(stack, manifest["wsi_study"])
    return {
        "viewer_url": ct["viewer_url"],
        "dicomweb_root": ct["dicomweb_root"],
        "wsi_viewer_url": wsi["viewer_url"],
    }
