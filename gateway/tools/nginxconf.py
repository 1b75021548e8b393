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
