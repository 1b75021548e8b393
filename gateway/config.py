"""Settings: ``DICOMGW_*`` environment variables, declared, read and validated once, here.

``Settings.from_env()`` is what gunicorn and the CLI use; tests build ``Settings.from_mapping({...})`` and never
monkeypatch globals. A missing or malformed value raises ``ConfigError`` naming the variable. Modules that run
without full settings (the S3 storage, the token commands of the CLI) read single variables through
``env_value``/``env_int``/``env_list``, which apply the same declaration. README's variable table is generated
from ``VARIABLES`` and ``ELSEWHERE`` (``python -m gateway.config --markdown``; tests/unit/test_config.py checks it).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import SplitResult, urlsplit

from gateway.errors import ConfigError

PREFIX = "DICOMGW_"


class Variable(NamedTuple):
    required: bool  # in production
    default: str
    meaning: str  # one Markdown line: README's table is generated from it
    minimum: int | None = None  # an integer variable, at least this


# The ``Settings`` variables, names without the prefix.
VARIABLES: dict[str, Variable] = {
    "SIGNING_KEYS": Variable(
        True,
        "",
        "Comma-separated token signing keys, oldest first; the newest signs, all verify.",
    ),
    "VERIFY_KEYS": Variable(
        False,
        "",
        "Comma-separated keys that verify tokens but never sign (step 1 of a key rotation).",
    ),
    "API_KEYS": Variable(
        True,
        "",
        "Comma-separated API keys for server-to-server calls (tokens, admin), each `key` or `label:key`; the label "
        "(default `key-` + 8 hex digits of the key's SHA-256) names the caller in audit records, never the key.",
    ),
    "STORAGE_URL": Variable(
        True,
        "",
        "`file:///abs/dir` or `s3://bucket/prefix` (S3-compatible via `AWS_ENDPOINT_URL`). A missing folder is "
        "created at start-up only: one that goes missing later (an unmounted volume) makes storage a 503 until it "
        "is back, never a new empty folder.",
    ),
    "DATABASE_URL": Variable(
        True,
        "",
        "Catalog: `sqlite:///path.db` or `postgresql://user:pass@host/db` (an `@` in the password as `%40`).",
    ),
    "PHI_POLICY": Variable(False, "", "Path of the PHI / data-sovereignty policy (TOML). Empty: no PHI hooks run."),
    "PUBLIC_URL": Variable(
        False,
        "",
        "External base URL (`https://dicom.example.org`, or with a path, `https://portal.example.org/pacs`, where a "
        "portal's proxy publishes the gateway under a prefix and takes it off on the way in: `location /pacs/ { "
        "proxy_pass http://gateway/; }`; every URL handed out, the viewer's own calls and the redirects then stay "
        "under it) of viewer, DICOMweb and STOW `RetrieveURL` URLs; unset: the "
        "scheme and host the client used, as NGINX passes them (`Host`, `X-Forwarded-Proto`, NGINX's own "
        "scheme: a client's or a proxy's `X-Forwarded-Ssl` and `X-Forwarded-Protocol` are dropped; the host of an "
        "absolute-form request target, `GET http://host:port/...`, else the `Host` header, else, for an HTTP/1.0 "
        "request without one, the address and port it came in on); set it behind a load "
        "balancer that terminates TLS (NGINX then sees `http`), and for Python's dicomweb-client on a port other than "
        "80/443 (`stack up --host 0.0.0.0`, which leaves it unset): that client sends `Host` without the port, so the "
        "URLs it is given lack it. No `user:pass@`: it is handed to every client.",
    ),
    "CORS_ORIGINS": Variable(
        False,
        "",
        "Comma-separated origins allowed to call DICOMweb from a browser (exact match).",
    ),
    "TOKEN_MAX_TTL": Variable(False, "3600", "Upper bound, in seconds, on any token's lifetime.", minimum=1),
    "TOKEN_DEFAULT_TTL": Variable(False, "900", "Token lifetime when the request names none.", minimum=1),
    "SESSION_MAX": Variable(
        False,
        "43200",
        "Upper bound, in seconds, on a token's `session_max`: how long a viewer may keep renewing it "
        "(`POST /api/v1/tokens/renew`).",
        minimum=1,
    ),
    "MODE": Variable(
        False,
        "production",
        "`production`: every required value must be set. `development`: missing ones default to `./var` (keys "
        "generated once, like `make demo`).",
    ),
    "TLS": Variable(
        False,
        "0",
        "1 when clients reach NGINX over HTTPS: cookies get `Secure` and the `__Host-` prefix.",
    ),
    "COOKIE_SAMESITE": Variable(
        False,
        "Lax",
        "SameSite of the session cookie: `Lax`, `Strict`, or `None` for iframes.",
    ),
    "REVOCATION_REFRESH": Variable(
        False,
        "2",
        "Seconds between reloads of the revocation list from the catalog.",
        minimum=0,
    ),
    "DELETE_SETTLE": Variable(
        False,
        "5",
        "Seconds a DELETE waits between hiding what it removes and removing the stored objects (then it answers): "
        "at least `DICOMGW_REVOCATION_REFRESH` + NGINX's `DICOMGW_AUTH_CACHE_SECONDS` + 1, so no node still serves "
        "from a decision or plan made before the delete. A lower value is refused; unset, it is raised to that bound "
        "when the bound is above 5.",
        minimum=0,
    ),
    "STOW_OVERWRITE": Variable(False, "0", "1: a STOW of a known SOP Instance UID with different bytes replaces it."),
    "DERIVATIVES": Variable(
        False,
        "1",
        "1: after the STOW answer, a worker stores a lossless HTJ2K copy of each monochrome frame of a native or "
        "losslessly compressed instance, served to "
        "clients whose Accept names its transfer syntax; 0: none are made.",
    ),
    "DERIVATIVES_FOR_ANY": Variable(
        False,
        "0",
        "1: also serve the HTJ2K derivative to `transfer-syntax=*` (off: DWV-like clients keep the stored bytes).",
    ),
    "DERIVE_QUEUE_URL": Variable(
        False,
        "",
        "Empty: derivative jobs go to the catalog's job table (the stack's worker polls it); an SQS queue URL "
        "(`https://sqs.REGION.amazonaws.com/ACCOUNT/NAME`, not its name or ARN: checked at start-up): sent there "
        "(the AWS deployment's Lambda consumes it).",
    ),
    "BULKDATA_THRESHOLD": Variable(
        False,
        "1024",
        "Binary elements longer than this many bytes become BulkDataURIs.",
        minimum=0,
    ),
    "DEID_KEY": Variable(False, "", "Secret for keyed UID remapping and date shifting when de-identifying."),
    "INGEST_PROCESSES": Variable(
        False,
        "2",
        "Processes per gunicorn worker that index and PHI-scan uploaded files (started on the first upload; "
        "workers x this many in all, forked from one fork server per worker: ~80 MB per worker at the start, shared "
        "pages counted once); 0: in the request's threads.",
        minimum=0,
    ),
    "TMP_DIR": Variable(
        False,
        "",
        "Where uploads are spooled before they are stored (default: the system temp dir); an existing folder the "
        "gateway can write, checked at start-up (never made: it belongs on a chosen disk).",
    ),
    "S3_PRESIGN_TTL": Variable(
        False,
        "3600",
        "Lifetime (s) of the presigned storage paths NGINX follows; cached for half of it. With S3 storage it must "
        "be at least twice `DICOMGW_PLAN_CACHE_SECONDS` (checked at start-up).",
        minimum=2,
    ),
    "PLAN_CACHE_SECONDS": Variable(
        False,
        "600",
        "How long NGINX may keep a read plan of a single instance (`X-Accel-Expires`); the presigned paths in it must "
        "outlive it; below 1800 (a deletion's tombstone).",
        minimum=1,
    ),
    "AUDIT_RETENTION_DAYS": Variable(
        False,
        "365",
        "Days the access audit trail keeps a row; the collector deletes older ones as it loads new lines.",
        minimum=1,
    ),
    "AUDIT_COLLECT_SECONDS": Variable(
        False,
        "5",
        "Seconds between two passes of the access audit collector over NGINX's JSON access log.",
        minimum=1,
    ),
}

# Read by a library, not by us: declared so README's table (and a reader) finds them here too.
ELSEWHERE: dict[str, Variable] = {
    "AWS_ENDPOINT_URL": Variable(
        False,
        "",
        "S3-compatible endpoint (MinIO, moto): `http(s)://host[:port]`, checked at start-up with `s3://` storage; "
        "standard boto3 variable.",
    ),
    "PROMETHEUS_MULTIPROC_DIR": Variable(
        False,
        "",
        "Folder where gunicorn workers keep their metrics so `GET /metrics` sums them (`stack up` sets it); "
        "standard prometheus_client variable. An existing folder the gateway can write, checked at start-up "
        "(never made).",
    ),
}


# DICOMGW_ names read elsewhere that are close to a setting's: the upload client's key, NGINX's decision cache
NOT_SETTINGS = frozenset({"API_KEY", "AUTH_CACHE_SECONDS"})


def check_names(env: Mapping[str, str]) -> None:
    """ConfigError for a DICOMGW_ name one typo from a setting: `DICOMGW_PHI_POLCY` left the gateway without its PHI
    policy, silently (a name far from every setting may be another tool's: compose's .env, the NGINX template)."""
    for given in sorted(env):
        name = given[len(PREFIX) :]
        if not given.startswith(PREFIX) or name in VARIABLES or name in NOT_SETTINGS:
            continue
        meant = difflib.get_close_matches(name, list(VARIABLES), n=1, cutoff=0.8)
        if meant:
            problem = f"no setting of this name: did you mean {PREFIX}{meant[0]}? (rename it, or remove it)"
            raise ConfigError(given, problem)


def env_value(name: str, env: Mapping[str, str] | None = None) -> str:
    """One declared variable (``name`` without the prefix, or an ``ELSEWHERE`` name): its value, else its default."""
    env = os.environ if env is None else env
    if name in ELSEWHERE:
        return _trimmed(name, env.get(name, "")) or ELSEWHERE[name].default
    return _trimmed(name, env.get(PREFIX + name, "")) or VARIABLES[name].default


def _trimmed(name: str, value: str) -> str:
    """A value without the blanks around it, which `docker run --env-file`, Kubernetes literals and hand-edited
    files keep: `file:///data ` made a folder named "data ", ` 1` was no flag. DEID_KEY stays as given: it is a
    secret whose every byte shapes the pseudonyms already made. A value in quotes is refused: the same files keep
    them as part of it (a quoted URL was "must start with file:///", a quoted API key a key no client sends)."""
    if name == "DEID_KEY":
        return value
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        variable = name if name in ELSEWHERE else PREFIX + name
        problem = "is written in quotes, which docker --env-file and systemd keep as part of the value: remove them"
        raise ConfigError(variable, problem)  # never the value: it may be a key
    return value


def env_int(name: str, env: Mapping[str, str] | None = None) -> int:
    """A declared integer variable, validated against its minimum (``ConfigError`` names it)."""
    return _int(name, env_value(name, env), VARIABLES[name].minimum or 0)


def env_list(name: str, env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """A declared comma-separated variable, empty items dropped."""
    return _split(env_value(name, env))


def markdown_table() -> str:
    """README's variable table (section Configuration), generated from the declarations above."""
    rows = ["| Variable | Required | Default | Meaning |", "|---|---|---|---|"]
    named = [(PREFIX + name, v) for name, v in VARIABLES.items()] + list(ELSEWHERE.items())
    for name, variable in named:
        default = f"`{variable.default}`" if variable.default else "—"
        rows.append(f"| `{name}` | {'yes' if variable.required else 'no'} | {default} | {variable.meaning} |")
    return "\n".join(rows) + "\n"


def _s3_url_ok(url: str) -> bool:
    """``s3://bucket[/prefix]`` as ``S3Storage`` reads it: a bucket, no query, fragment or credentials, and a prefix
    whose segments are neither empty, ``.`` nor ``..`` (no backslash or NUL: the storage keys' rule)."""
    parts = urlsplit(url)
    if not parts.netloc or "@" in parts.netloc or parts.query or parts.fragment or "?" in url or "#" in url:
        return False
    prefix = parts.path.strip("/")
    if not prefix:
        return True
    return "\\" not in prefix and "\x00" not in prefix and all(
        segment not in ("", ".", "..") for segment in prefix.split("/")
    )


def _port_ok(parts: SplitResult) -> bool:
    try:
        parts.port  # noqa: B018 - a port that is no number, or past 65535, raises here
    except ValueError:
        return False
    return True


def _endpoint_ok(url: str) -> bool:
    """``AWS_ENDPOINT_URL``: unset (AWS itself), or ``http(s)://host[:port]`` without ``user:pass@``."""
    if not url:
        return True
    parts = urlsplit(url)
    if not _port_ok(parts):
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and "@" not in parts.netloc


def _unset(value: str) -> bool:
    """A required value that names nothing: empty, blanks, or only the list separators (``DICOMGW_SIGNING_KEYS=,``
    left no key to sign with, yet passed for set). ``stack up`` and ``token issue`` read such a value as unset."""
    return not value.strip(", \t")


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class ApiKey:
    """One server-to-server key and the label audit records name it by (the key itself is never recorded)."""

    label: str
    secret: str = field(repr=False)


API_KEY_LABEL = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def parse_api_keys(value: str) -> tuple[ApiKey, ...]:
    """``key`` or ``label:key``, comma-separated. Generated keys (URL-safe base64) never hold a colon."""
    keys = []
    for entry in _split(value):
        label, colon, secret = entry.rpartition(":")
        # `ops: KEY`, as YAML is written: the blank made the key " KEY", which no Bearer header (read stripped)
        # could ever present: every call was a 401, and start-up said nothing
        label, secret = label.strip(), secret.strip()
        if not colon:
            label = "key-" + hashlib.sha256(secret.encode()).hexdigest()[:8]
        elif not API_KEY_LABEL.match(label) or not secret:
            raise ConfigError(PREFIX + "API_KEYS", "an entry is not `key` or `label:key` (label: 1-64 of A-Za-z0-9._-)")
        keys.append(ApiKey(label, secret))
    return tuple(keys)


def _flag(name: str, value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(PREFIX + name, f"expected 0 or 1, got {value!r}")


def check_public_url(value: str) -> str:
    """``DICOMGW_PUBLIC_URL``: empty, or an http(s) URL with a host and no query or fragment (it prefixes every URL
    the gateway hands out: a value such as ``notaurl`` made viewer URLs that open nothing)."""
    if not value:
        return ""
    parts = urlsplit(value)
    if "@" in parts.netloc:
        # it prefixes every URL handed to clients: a user name or password there went to every viewer and log;
        # the value is not repeated (it holds the credential)
        raise ConfigError(PREFIX + "PUBLIC_URL", "must not hold a user name or password (user:pass@)")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(PREFIX + "PUBLIC_URL", f"must be an http:// or https:// URL with a host: {value!r}")
    return value.rstrip("/")


def check_queue_url(value: str) -> str:
    """``DICOMGW_DERIVE_QUEUE_URL``: empty, or a queue URL as SQS names one (``https://sqs.REGION.amazonaws.com/
    ACCOUNT/NAME``; ``http://`` for a local SQS-compatible server). A queue's name or ARN was taken, and every
    upload then logged "derivative not queued: SQS unavailable" while no derivative was ever made."""
    parts = urlsplit(value)
    if value and (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or not _port_ok(parts)
        or not parts.path.strip("/")
        or "@" in parts.netloc
        or parts.query
        or parts.fragment
    ):
        shown = "" if "@" in value else f": {value!r}"  # never repeat a user:pass@
        raise ConfigError(
            PREFIX + "DERIVE_QUEUE_URL",
            f"must be an SQS queue URL such as https://sqs.eu-central-1.amazonaws.com/123456789012/derive{shown}",
        )
    return value


def check_keys(name: str, keys: tuple[str, ...]) -> tuple[str, ...]:
    """Signing or verifying keys (``name`` without the prefix): each at least 32 characters."""
    if any(len(key) < 32 for key in keys):
        raise ConfigError(PREFIX + name, "every key must be at least 32 characters")
    return keys


def check_database_url(value: str) -> str:
    """``DICOMGW_DATABASE_URL``: SQLite or PostgreSQL, and no bare ``@`` in its user name or password."""
    if not value.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
        raise ConfigError(PREFIX + "DATABASE_URL", "must start with sqlite:/// or postgresql://")
    if value.startswith("sqlite:///") and value[len("sqlite:///") :].partition("?")[0] in ("", ":memory:"):
        # SQLite's in-memory database: `db upgrade` migrated one and said so, and each process then met an empty
        # catalog of its own (the workers told to run `db upgrade`, which had "succeeded")
        raise ConfigError(
            PREFIX + "DATABASE_URL",
            "names no file: write sqlite:///catalog.db (relative to the folder it is run in) or sqlite:////path/catalog.db",
        )
    if value.split("?", 1)[0].count("@") > 1:
        # a password holding a bare @ (p@ss) is cut at it: the rest became the host, and the driver's "failed to
        # resolve host 'ss@db'" printed part of the password. Refused here, the value never shown.
        raise ConfigError(PREFIX + "DATABASE_URL", "the user name or password holds an unencoded @: write it as %40")
    return value


# An app's own scheme: the origin a mobile WebView sends from its bundled pages (iOS Capacitor's
# ``capacitor://localhost``, Ionic's ``ionic://localhost``, Tauri's ``tauri://localhost``). ``file:`` pages send
# ``Origin: null``, which no entry may allow (every sandboxed or opaque page sends it too).
_APP_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")


def _origin(value: str) -> str:
    """One ``DICOMGW_CORS_ORIGINS`` entry: a browser origin, ``scheme://host[:port]``, exactly as browsers send it
    (no path, no trailing slash, no ``*``: an entry that can never match was accepted silently). The scheme is
    ``http``, ``https`` or an app's own (``_APP_SCHEME``)."""
    parts = urlsplit(value)
    if (
        not _APP_SCHEME.fullmatch(parts.scheme)
        or parts.scheme == "file"
        or not parts.hostname
        or "*" in value
        or "@" in value  # no browser sends a user name or password in Origin
        or value != f"{parts.scheme}://{parts.netloc}"
        or not _port_ok(parts)
    ):
        shown = "" if "@" in value else f": {value!r}"  # never repeat a user:pass@ an entry held
        raise ConfigError(PREFIX + "CORS_ORIGINS", f"each entry must be an origin such as https://portal.example.org{shown}")
    sent = _origin_as_sent(parts)
    if sent != value:
        # NGINX matches the Origin header exactly (dicomgw.conf.template's map): an entry written otherwise than
        # browsers serialise the origin (RFC 6454 6.2) was accepted and never allowed a request
        raise ConfigError(
            PREFIX + "CORS_ORIGINS",
            f"{value!r} never matches: browsers send this origin as {sent!r} (host in lower case and ASCII, no "
            "default port): write that",
        )
    return value


_DEFAULT_PORTS = {"http": 80, "https": 443}



def _origin_as_sent(parts: SplitResult) -> str:
    """The origin as a browser serialises it in ``Origin`` (RFC 6454 6.2, the URL Standard's host): lower case, an
    internationalised name in its ``xn--`` form, a scheme's default port left out."""
    host = parts.hostname or ""
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            host = "xn--..."  # no ASCII form Python can spell: the message still says which form is meant
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address keeps its brackets
    port = parts.port
    shown_port = "" if port is None or _DEFAULT_PORTS.get(parts.scheme) == port else f":{port}"
    return f"{parts.scheme}://{host}{shown_port}"


def _int(name: str, value: str, minimum: int = 0) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(PREFIX + name, f"expected an integer, got {value!r}") from None
    if number < minimum:
        raise ConfigError(PREFIX + name, f"must be at least {minimum}")
    if number > _INT_SETTING_MAX:
        # a lifetime past this ends beyond what dates can name (DICOMGW_TOKEN_MAX_TTL=10**20 let `token issue
        # --ttl 10**17` die in a traceback formatting its expiry): a one-line error at start-up instead
        raise ConfigError(PREFIX + name, f"must be at most {_INT_SETTING_MAX}")
    return number


_INT_SETTING_MAX = 2**31 - 1  # every integer setting, as every integer in a request (gateway/numbers.py)


_AUTH_CACHE_SECONDS = "2"  # NGINX's default (docker/nginx.Dockerfile, stack up)


def _delete_settle(given: str, refresh: int, auth_cache: str) -> int:
    """DELETE_SETTLE as set, or the default raised to the bound when a slower refresh or decision cache needs more.
    A value below the bound is refused: a node could still serve, from a decision or plan cached before a DELETE,
    objects the DELETE then removes (gateway/lifecycle.py, step 2)."""
    bound = refresh + _int("AUTH_CACHE_SECONDS", auth_cache, 0) + 1
    if not given:
        return max(int(VARIABLES["DELETE_SETTLE"].default), bound)
    settle = _int("DELETE_SETTLE", given, 0)
    if settle < bound:
        raise ConfigError(
            PREFIX + "DELETE_SETTLE",
            f"must be at least {bound} ({PREFIX}REVOCATION_REFRESH + {PREFIX}AUTH_CACHE_SECONDS + 1): a node could "
            "still serve what a DELETE removed from a decision cached before it",
        )
    return settle


def read_or_create_secret(path: Path) -> str:
    """A secret kept in a 0600 file, created on first use and reused afterwards."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def development_database_url() -> str:
    """The catalog development mode names when ``DICOMGW_DATABASE_URL`` is unset (``make demo``'s, under ./var)."""
    return f"sqlite:///{Path('var').resolve() / 'catalog.db'}"


def _development_defaults(values: dict[str, str]) -> None:
    """Development mode fills what production demands: the embedded default of ``make demo`` under ./var
    (keys generated once, mode 0600)."""
    var = Path("var").resolve()
    defaults = {
        "STORAGE_URL": lambda: f"file://{var / 'objects'}",
        "DATABASE_URL": development_database_url,
        "SIGNING_KEYS": lambda: read_or_create_secret(var / "signing.key"),
        "API_KEYS": lambda: read_or_create_secret(var / "api.key"),
    }
    for name, make in defaults.items():
        if _unset(values[name]):
            try:
                values[name] = make()
            except OSError as error:  # ./var a file, or a read-only folder: was a traceback from pathlib
                raise ConfigError(
                    PREFIX + "MODE",
                    f"development keeps its keys and catalog in {var}, which is not a writable folder "
                    f"({error.strerror})",
                ) from None


@dataclass(frozen=True)
class Settings:
    signing_keys: tuple[str, ...]
    api_keys: tuple[ApiKey, ...]
    storage_url: str
    database_url: str
    phi_policy: Path | None = None
    public_url: str = ""
    cors_origins: tuple[str, ...] = ()
    token_max_ttl: int = 3600
    token_default_ttl: int = 900
    session_max: int = 43200
    mode: str = "production"
    tls: bool = False
    cookie_samesite: str = "Lax"
    revocation_refresh: float = 2.0
    delete_settle: float = 5.0
    stow_overwrite: bool = False
    derivatives: bool = True
    derivatives_for_any: bool = False
    derive_queue_url: str = ""
    bulkdata_threshold: int = 1024
    ingest_processes: int = 2
    deid_key: str = ""
    tmp_dir: str = ""
    verify_keys: tuple[str, ...] = ()
    s3_presign_ttl: int = 3600
    plan_cache_seconds: int = 600
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        check_names(env)
        values = {name: env.get(PREFIX + name, "") for name in VARIABLES}
        # NGINX's decision cache, read here only to check DELETE_SETTLE against it (2 where NGINX runs apart)
        values["AUTH_CACHE_SECONDS"] = env.get(PREFIX + "AUTH_CACHE_SECONDS", "")
        values["AWS_ENDPOINT_URL"] = env_value("AWS_ENDPOINT_URL", env)  # checked with an s3:// storage
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Settings:
        """Build from ``{"SIGNING_KEYS": "...", ...}`` (names without the prefix; lower case accepted)."""
        values = {name: _trimmed(name, str(raw.get(name, raw.get(name.lower(), "")) or "")) for name in VARIABLES}
        settle_given = values["DELETE_SETTLE"]
        for name, (_, default, _, _) in VARIABLES.items():
            if not values[name]:
                values[name] = default
        mode = values["MODE"]
        if mode not in ("production", "development"):
            raise ConfigError(PREFIX + "MODE", "expected production or development")
        if mode == "development":
            _development_defaults(values)
        for name, (required, _, _, _) in VARIABLES.items():
            if required and _unset(values[name]):
                raise ConfigError(PREFIX + name, "is required but not set")
        storage = values["STORAGE_URL"]
        if not (storage.startswith("file:///") or storage.startswith("s3://")):
            raise ConfigError(PREFIX + "STORAGE_URL", "must start with file:/// or s3://")
        if storage.startswith("s3://") and not _s3_url_ok(storage):
            # what S3Storage takes (a bucket, then an optional prefix of plain segments): found here, it is the
            # one-line start-up error README promises, not a traceback from the storage module
            raise ConfigError(PREFIX + "STORAGE_URL", "must be s3://bucket or s3://bucket/prefix")
        if storage.startswith("s3://") and not _endpoint_ok(str(raw.get("AWS_ENDPOINT_URL") or "")):
            # boto3 raised "Invalid endpoint" (a traceback at start-up) for `minio:9000`, took a scheme typo, and a
            # user:pass@ (which boto3 does not use) was written into NGINX's rendered Host; the value is not shown
            raise ConfigError(
                "AWS_ENDPOINT_URL", "must be an http:// or https:// URL with a host, such as http://minio:9000"
            )
        database = check_database_url(values["DATABASE_URL"])
        keys = check_keys("SIGNING_KEYS", _split(values["SIGNING_KEYS"]))
        verify_keys = check_keys("VERIFY_KEYS", _split(values["VERIFY_KEYS"]))
        samesite = values["COOKIE_SAMESITE"].capitalize()
        if samesite not in ("Lax", "Strict", "None"):
            raise ConfigError(PREFIX + "COOKIE_SAMESITE", "expected Lax, Strict or None")
        tls = _flag("TLS", values["TLS"])
        if samesite == "None" and not tls:
            raise ConfigError(PREFIX + "COOKIE_SAMESITE", "None requires DICOMGW_TLS=1 (browsers demand Secure)")
        max_ttl = _int("TOKEN_MAX_TTL", values["TOKEN_MAX_TTL"], 1)
        presign_ttl = _int("S3_PRESIGN_TTL", values["S3_PRESIGN_TTL"], 2)
        plan_seconds = _int("PLAN_CACHE_SECONDS", values["PLAN_CACHE_SECONDS"], 1)
        from gateway.auth import TOMBSTONE_SECONDS  # here: auth imports this module

        # A plan cached before a delete is keyed by the study's deletion generation, which lasts TOMBSTONE_SECONDS:
        # a plan that outlived it would be found again under the generation from before the delete.
        if plan_seconds >= TOMBSTONE_SECONDS:
            raise ConfigError(
                PREFIX + "PLAN_CACHE_SECONDS",
                f"{plan_seconds} s is not below the {TOMBSTONE_SECONDS} s a deletion's tombstone lasts: a read plan "
                "cached before a DELETE could be served again after it",
            )
        # A presigned path is reused for half its lifetime, then sits in a cached plan for up to plan_seconds: it
        # must still be valid when NGINX follows it, or cached reads fail with 403 from S3 until the plan expires.
        if storage.startswith("s3://") and presign_ttl < 2 * plan_seconds:
            raise ConfigError(
                PREFIX + "S3_PRESIGN_TTL",
                f"{presign_ttl} s is shorter than twice {PREFIX}PLAN_CACHE_SECONDS ({plan_seconds} s): a cached read "
                "plan would outlive its presigned storage paths; raise the one or lower the other",
            )
        refresh = _int("REVOCATION_REFRESH", values["REVOCATION_REFRESH"], 0)
        settle = _delete_settle(settle_given, refresh, str(raw.get("AUTH_CACHE_SECONDS") or _AUTH_CACHE_SECONDS))
        policy = values["PHI_POLICY"]
        if policy and not Path(policy).is_file():
            raise ConfigError(PREFIX + "PHI_POLICY", f"no such file: {policy}")
        return cls(
            signing_keys=keys,
            api_keys=parse_api_keys(values["API_KEYS"]),
            storage_url=storage,
            database_url=database,
            phi_policy=Path(policy) if policy else None,
            public_url=check_public_url(values["PUBLIC_URL"]),
            cors_origins=tuple(_origin(origin) for origin in _split(values["CORS_ORIGINS"])),
            token_max_ttl=max_ttl,
            token_default_ttl=min(_int("TOKEN_DEFAULT_TTL", values["TOKEN_DEFAULT_TTL"], 1), max_ttl),
            session_max=_int("SESSION_MAX", values["SESSION_MAX"], 1),
            mode=mode,
            tls=tls,
            cookie_samesite=samesite,
            revocation_refresh=float(refresh),
            delete_settle=float(settle),
            stow_overwrite=_flag("STOW_OVERWRITE", values["STOW_OVERWRITE"]),
            derivatives=_flag("DERIVATIVES", values["DERIVATIVES"]),
            derivatives_for_any=_flag("DERIVATIVES_FOR_ANY", values["DERIVATIVES_FOR_ANY"]),
            derive_queue_url=check_queue_url(values["DERIVE_QUEUE_URL"]),
            bulkdata_threshold=_int("BULKDATA_THRESHOLD", values["BULKDATA_THRESHOLD"], 0),
            ingest_processes=_int("INGEST_PROCESSES", values["INGEST_PROCESSES"], 0),
            deid_key=values["DEID_KEY"],
            tmp_dir=values["TMP_DIR"],
            verify_keys=verify_keys,
            s3_presign_ttl=presign_ttl,
            plan_cache_seconds=plan_seconds,
        )

    def with_changes(self, **changes: Any) -> Settings:
        return replace(self, **changes)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--markdown"]:
        raise SystemExit("usage: python -m gateway.config --markdown")
    sys.stdout.write(markdown_table())
