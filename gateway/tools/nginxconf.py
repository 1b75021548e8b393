"""Render the NGINX template the way the official image's envsubst step does: only ``${DICOMGW_*}`` names are
replaced, NGINX's own ``$variables`` are left alone, and a name the template uses but nobody set is an error
(an empty upstream would otherwise fail later and less clearly)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
NGINX_DIR = REPO_ROOT / "nginx"
_NAME = re.compile(r"\$\{(DICOMGW_[A-Z0-9_]+)\}")


def render_text(text: str, values: Mapping[str, str]) -> str:
    missing = sorted({name for name in _NAME.findall(text) if name not in values})
    if missing:
        raise KeyError(f"template variables not set: {', '.join(missing)}")
    return _NAME.sub(lambda m: values[m.group(1)], text)


def render(out_dir: Path, values: Mapping[str, str], source: Path = NGINX_DIR) -> Path:
    """Write ``nginx.conf`` and ``conf.d/**`` under ``out_dir``; return the path of ``nginx.conf``."""
    conf_d = out_dir / "conf.d"
    if conf_d.exists():
        shutil.rmtree(conf_d)
    for template in sorted((source / "templates").rglob("*.template")):
        target = conf_d / template.relative_to(source / "templates").with_suffix("")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render_text(template.read_text(), values))
    main = out_dir / "nginx.conf"
    shutil.copyfile(source / "nginx.conf", main)
    return main


def cors_regex(origins: tuple[str, ...]) -> str:
    """A regex matching exactly the allowed origins (``^$`` matches nothing a browser sends)."""
    if not origins:
        return "^$"
    return "^(" + "|".join(re.escape(origin) for origin in origins) + ")$"


# CSP Level 3's ancestor-source (https://www.w3.org/TR/CSP3/#directive-frame-ancestors): a scheme-source
# (``https:``) or a host-source (``[scheme://]host[:port][/path]``, the host may start with ``*.`` and end with a
# dot, as a fully qualified name may). The path is kept to characters that mean nothing to NGINX either: the value is
# written into a quoted ``add_header``, where a ``"`` ended the header and began a directive of its own, and a ``$``
# names an NGINX variable.
_SCHEME_SOURCE = re.compile(r"[a-z][a-z0-9+.-]*:", re.IGNORECASE | re.ASCII)
_HOST_SOURCE = re.compile(
    r"(?:[a-z][a-z0-9+.-]*://)?(?:\*|(?:\*\.)?[a-z0-9-]+(?:\.[a-z0-9-]+)*\.?)(?::(?:[0-9]+|\*))?(?:/[a-z0-9._~!&()*+=:@%/-]*)?",
    re.IGNORECASE | re.ASCII,  # ASCII: ignoring case, [a-z] matched the Kelvin sign too
)
_KEYWORDS = ("'self'", "'none'")


def frame_ancestors(value: str) -> str:
    """``DICOMGW_FRAME_ANCESTORS`` checked against CSP's grammar, returned as NGINX is to send it; a value a browser
    would ignore (and so let no portal frame the viewer) is a ``ValueError`` saying what to write instead."""
    if any(space in value for space in "\t\n\r"):
        raise ValueError("write the sources on one line, separated by spaces")
    sources = [source for source in value.split(" ") if source]
    if not sources:
        raise ValueError("names no source: 'self' lets this site frame the viewer, 'none' no site")
    for source in sources:
        if "," in source:
            raise ValueError(f"'{source}': separate the sources with spaces, not commas, as CSP writes them")
        if source.lower() in ("self", "none"):
            raise ValueError(f"'{source}' is read as a host name: write '{source.lower()}' with its single quotes")
        if source.lower() in _KEYWORDS:
            continue
        if not (_SCHEME_SOURCE.fullmatch(source) or _HOST_SOURCE.fullmatch(source)):
            raise ValueError(
                f"'{source}' is not a CSP source: write 'self', 'none', a scheme such as https:, or an origin such "
                "as https://portal.example.org"
            )
    if "'none'" in (source.lower() for source in sources) and len(sources) > 1:
        raise ValueError("'none' stands alone: with other sources a browser ignores it")
    return " ".join(sources)
