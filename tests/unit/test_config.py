"""gateway.config: defaults, parsing, and a ConfigError naming the variable for every bad value."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from gateway.config import VARIABLES, ApiKey, Settings, env_int, env_list, env_value, markdown_table
from gateway.errors import ConfigError

KEY = "s" * 32
BASE = {
    "SIGNING_KEYS": KEY,
    "API_KEYS": "api-1",
    "STORAGE_URL": "file:///srv/objects",
    "DATABASE_URL": "sqlite:///srv/catalog.db",
}


def settings(**changes: Any) -> Settings:
    return Settings.from_mapping({**BASE, **changes})


def config_error(**changes: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        settings(**changes)
    return caught.value


def test_defaults() -> None:
    assert settings() == Settings(
        signing_keys=(KEY,),
        api_keys=(ApiKey("key-" + hashlib.sha256(b"api-1").hexdigest()[:8], "api-1"),),
        storage_url="file:///srv/objects",
        database_url="sqlite:///srv/catalog.db",
        phi_policy=None,
        public_url="",
        cors_origins=(),
        token_max_ttl=3600,
        token_default_ttl=900,
        mode="production",
        tls=False,
        cookie_samesite="Lax",
        revocation_refresh=2.0,
        stow_overwrite=False,
        bulkdata_threshold=1024,
        deid_key="",
        tmp_dir="",
    )


def test_every_variable_has_a_description() -> None:
    assert all(variable.meaning for variable in VARIABLES.values())
    assert [name for name, variable in VARIABLES.items() if variable.required] == [
        "SIGNING_KEYS",
        "API_KEYS",
        "STORAGE_URL",
        "DATABASE_URL",
    ]


@pytest.mark.parametrize("name", ["SIGNING_KEYS", "API_KEYS", "STORAGE_URL", "DATABASE_URL"])
@pytest.mark.parametrize("missing", [None, ""])
def test_missing_required_value_names_it(name: str, missing: str | None) -> None:
    raw = dict(BASE)
    if missing is None:
        del raw[name]
    else:
        raw[name] = missing
    with pytest.raises(ConfigError) as caught:
        Settings.from_mapping(raw)
    assert caught.value.variable == f"DICOMGW_{name}"
    assert str(caught.value) == f"DICOMGW_{name}: is required but not set"


@pytest.mark.parametrize(
    ("changes", "variable", "message"),
    [
        ({"STORAGE_URL": "http://bucket"}, "STORAGE_URL", "must start with file:/// or s3://"),
        ({"STORAGE_URL": "file://relative/dir"}, "STORAGE_URL", "must start with file:/// or s3://"),
        ({"STORAGE_URL": "/srv/objects"}, "STORAGE_URL", "must start with file:/// or s3://"),
        ({"DATABASE_URL": "mysql://db"}, "DATABASE_URL", "must start with sqlite:/// or postgresql://"),
        ({"DATABASE_URL": "sqlite://relative.db"}, "DATABASE_URL", "must start with sqlite:/// or postgresql://"),
        ({"SIGNING_KEYS": "s" * 31}, "SIGNING_KEYS", "every key must be at least 32 characters"),
        ({"SIGNING_KEYS": f"{KEY},short"}, "SIGNING_KEYS", "every key must be at least 32 characters"),
        ({"COOKIE_SAMESITE": "sometimes"}, "COOKIE_SAMESITE", "expected Lax, Strict or None"),
        ({"COOKIE_SAMESITE": "None"}, "COOKIE_SAMESITE", "None requires DICOMGW_TLS=1 (browsers demand Secure)"),
        (
            {"COOKIE_SAMESITE": "none", "TLS": "0"},
            "COOKIE_SAMESITE",
            "None requires DICOMGW_TLS=1 (browsers demand Secure)",
        ),
        ({"TLS": "maybe"}, "TLS", "expected 0 or 1, got 'maybe'"),
        ({"STOW_OVERWRITE": "2"}, "STOW_OVERWRITE", "expected 0 or 1, got '2'"),
        ({"TOKEN_MAX_TTL": "1h"}, "TOKEN_MAX_TTL", "expected an integer, got '1h'"),
        ({"TOKEN_MAX_TTL": "0"}, "TOKEN_MAX_TTL", "must be at least 1"),
        ({"TOKEN_DEFAULT_TTL": "-1"}, "TOKEN_DEFAULT_TTL", "must be at least 1"),
        ({"TOKEN_DEFAULT_TTL": "9.5"}, "TOKEN_DEFAULT_TTL", "expected an integer, got '9.5'"),
        ({"REVOCATION_REFRESH": "-1"}, "REVOCATION_REFRESH", "must be at least 0"),
        ({"REVOCATION_REFRESH": "soon"}, "REVOCATION_REFRESH", "expected an integer, got 'soon'"),
        ({"BULKDATA_THRESHOLD": "1k"}, "BULKDATA_THRESHOLD", "expected an integer, got '1k'"),
        (
            {"DELETE_SETTLE": "0"},
            "DELETE_SETTLE",
            "must be at least 5 (DICOMGW_REVOCATION_REFRESH + DICOMGW_AUTH_CACHE_SECONDS + 1): a node could still "
            "serve what a DELETE removed from a decision cached before it",
        ),
        (
            {"DELETE_SETTLE": "6", "REVOCATION_REFRESH": "9", "AUTH_CACHE_SECONDS": "1"},
            "DELETE_SETTLE",
            "must be at least 11 (DICOMGW_REVOCATION_REFRESH + DICOMGW_AUTH_CACHE_SECONDS + 1): a node could still "
            "serve what a DELETE removed from a decision cached before it",
        ),
        ({"DELETE_SETTLE": "-1"}, "DELETE_SETTLE", "must be at least 0"),
        ({"MODE": "test"}, "MODE", "expected production or development"),
        ({"PHI_POLICY": "/nonexistent/policy.toml"}, "PHI_POLICY", "no such file: /nonexistent/policy.toml"),
        ({"PUBLIC_URL": "notaurl"}, "PUBLIC_URL", "must be an http:// or https:// URL with a host: 'notaurl'"),
        (
            {"PUBLIC_URL": "javascript:alert(1)"},
            "PUBLIC_URL",
            "must be an http:// or https:// URL with a host: 'javascript:alert(1)'",
        ),
        (
            {"PUBLIC_URL": "https://dicom.example.org/?x=1"},
            "PUBLIC_URL",
            "must be an http:// or https:// URL with a host: 'https://dicom.example.org/?x=1'",
        ),
        *(
            (
                {"CORS_ORIGINS": f"https://ok.example,{origin}"},
                "CORS_ORIGINS",
                f"each entry must be an origin such as https://portal.example.org: {origin!r}",
            )
            for origin in ("*", "portal.example", "http://a.example/path", "https://a.example/", "https://*.example")
        ),
    ],
)
def test_bad_values_name_their_variable(changes: dict[str, str], variable: str, message: str) -> None:
    error = config_error(**changes)
    assert error.variable == f"DICOMGW_{variable}"
    assert str(error) == f"DICOMGW_{variable}: {message}"


def test_policy_directory_is_not_a_file(tmp_path: Path) -> None:
    assert config_error(PHI_POLICY=str(tmp_path)).variable == "DICOMGW_PHI_POLICY"


def test_policy_file(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("")
    assert settings(PHI_POLICY=str(policy)).phi_policy == policy


def test_delete_settle_defaults_to_its_bound_when_the_caches_are_slower() -> None:
    """Unset, DELETE_SETTLE is 5 or the bound it must not go below (REVOCATION_REFRESH + NGINX's AUTH_CACHE_SECONDS
    + 1), whichever is larger; NGINX's variable is read from the environment when it is there."""
    assert settings().delete_settle == 5.0
    assert settings(REVOCATION_REFRESH="9").delete_settle == 12.0
    assert settings(DELETE_SETTLE="7").delete_settle == 7.0
    env = {"DICOMGW_SIGNING_KEYS": "k" * 32, "DICOMGW_API_KEYS": "a" * 32, "DICOMGW_STORAGE_URL": "file:///data",
           "DICOMGW_DATABASE_URL": "sqlite:////tmp/gw.db"}  # fmt: skip
    assert Settings.from_env({**env, "DICOMGW_AUTH_CACHE_SECONDS": "10"}).delete_settle == 13.0
    with pytest.raises(ConfigError, match="^DICOMGW_DELETE_SETTLE: must be at least 13 "):
        Settings.from_env({**env, "DICOMGW_AUTH_CACHE_SECONDS": "10", "DICOMGW_DELETE_SETTLE": "12"})


def test_accepted_values() -> None:
    parsed = settings(
        STORAGE_URL="s3://bucket/prefix",
        DATABASE_URL="postgresql://user:pass@db/gw",
        TLS="true",
        COOKIE_SAMESITE="none",
        STOW_OVERWRITE="yes",
        TOKEN_MAX_TTL="7200",
        TOKEN_DEFAULT_TTL="60",
        REVOCATION_REFRESH="0",
        BULKDATA_THRESHOLD="0",
        MODE="development",
        PUBLIC_URL="https://dicom.example.org//",
        DEID_KEY="d",
        TMP_DIR="/spool",
    )
    assert parsed.storage_url == "s3://bucket/prefix"
    assert parsed.database_url == "postgresql://user:pass@db/gw"
    assert (parsed.tls, parsed.cookie_samesite, parsed.stow_overwrite) == (True, "None", True)
    assert (parsed.token_max_ttl, parsed.token_default_ttl) == (7200, 60)
    assert (parsed.revocation_refresh, parsed.bulkdata_threshold) == (0.0, 0)
    assert parsed.mode == "development"
    assert parsed.public_url == "https://dicom.example.org"
    assert (parsed.deid_key, parsed.tmp_dir) == ("d", "/spool")
    assert settings(DATABASE_URL="postgresql+psycopg://u@h/d").database_url == "postgresql+psycopg://u@h/d"
    assert settings(COOKIE_SAMESITE="strict").cookie_samesite == "Strict"
    assert settings(TLS="off", STOW_OVERWRITE="False").tls is False


def test_default_ttl_is_capped_by_max_ttl() -> None:
    assert settings(TOKEN_MAX_TTL="600").token_default_ttl == 600
    assert settings(TOKEN_MAX_TTL="600", TOKEN_DEFAULT_TTL="1200").token_default_ttl == 600


def test_comma_lists_are_trimmed() -> None:
    other = "o" * 40
    parsed = settings(
        SIGNING_KEYS=f" {KEY} , {other} ,, ",
        API_KEYS="a, portal-1:b ,c,",
        CORS_ORIGINS=" https://a.example ,https://b.example:8443 ",
    )
    assert parsed.signing_keys == (KEY, other)
    assert [key.secret for key in parsed.api_keys] == ["a", "b", "c"]
    assert [key.label for key in parsed.api_keys] == [
        "key-" + hashlib.sha256(b"a").hexdigest()[:8],
        "portal-1",
        "key-" + hashlib.sha256(b"c").hexdigest()[:8],
    ]


@pytest.mark.parametrize("entry", [":s3cret", "bad label:s3cret", "portal:", "x" * 65 + ":s3cret"])
def test_a_malformed_api_key_label_is_refused_without_echoing_the_key(entry: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings(API_KEYS=entry)
    assert "API_KEYS" in str(raised.value) and entry not in str(raised.value)


def test_an_api_key_never_shows_in_its_repr() -> None:
    assert "s3cret" not in repr(settings(API_KEYS="portal:s3cret").api_keys)


def test_cors_origins_split() -> None:
    parsed = settings(CORS_ORIGINS=" https://a.example ,https://b.example:8443 ")
    assert parsed.cors_origins == ("https://a.example", "https://b.example:8443")


def test_from_env_reads_the_prefix_only() -> None:
    env = {f"DICOMGW_{name}": value for name, value in BASE.items()}
    env.update({"DICOMGW_TOKEN_MAX_TTL": "120", "TOKEN_DEFAULT_TTL": "5", "SIGNING_KEYS": "ignored"})
    parsed = Settings.from_env(env)
    assert parsed.signing_keys == (KEY,)
    assert (parsed.token_max_ttl, parsed.token_default_ttl) == (120, 120)


def test_from_env_names_the_missing_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"DICOMGW_SIGNING_KEYS": KEY})
    assert str(caught.value) == "DICOMGW_API_KEYS: is required but not set"


def test_lower_case_names_are_accepted() -> None:
    raw = {name.lower(): value for name, value in BASE.items()}
    assert Settings.from_mapping(raw) == settings()


def test_with_changes() -> None:
    base = settings()
    changed = base.with_changes(token_max_ttl=10)
    assert (changed.token_max_ttl, base.token_max_ttl) == (10, 3600)


def test_readme_variable_table_is_the_generated_one() -> None:
    """README's table is ``python -m gateway.config --markdown``: regenerate it when a declaration changes."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("| Variable | Required | Default | Meaning |")
    assert readme[start : readme.index("\n\n", start) + 1] == markdown_table()


def test_no_module_reads_a_variable_by_name_but_config() -> None:
    """Every variable is read through config.py's declaration (``Settings``, ``env_value``...); the edge passes the
    whole environment on (the CLI to ``stack up``, the Lambda handler to ``Settings.from_env``), never one name."""
    package = Path(__file__).resolve().parents[2] / "gateway"
    for path in package.rglob("*.py"):
        if path.name == "config.py" or "tools" in path.relative_to(package).parts:
            continue
        text = path.read_text()
        assert "getenv(" not in text and "os.environ.get(" not in text and "os.environ[" not in text, path


def test_single_variables_apply_the_declaration() -> None:
    assert env_value("TOKEN_MAX_TTL", {}) == "3600"
    assert env_int("S3_PRESIGN_TTL", {"DICOMGW_S3_PRESIGN_TTL": "60"}) == 60
    with pytest.raises(ConfigError) as caught:
        env_int("S3_PRESIGN_TTL", {"DICOMGW_S3_PRESIGN_TTL": "1"})
    assert caught.value.variable == "DICOMGW_S3_PRESIGN_TTL"
    assert env_list("API_KEYS", {"DICOMGW_API_KEYS": " a, ,b "}) == ("a", "b")
    assert env_value("AWS_ENDPOINT_URL", {"AWS_ENDPOINT_URL": "http://minio:9000"}) == "http://minio:9000"


def test_a_plan_cache_longer_than_a_tombstone_is_refused() -> None:
    """gateway.auth.TOMBSTONE_SECONDS: a cached plan must expire before its deletion generation does."""
    with pytest.raises(ConfigError) as raised:
        settings(PLAN_CACHE_SECONDS="1800")
    assert str(raised.value).startswith("DICOMGW_PLAN_CACHE_SECONDS: 1800 s is not below the 1800 s")
    assert settings(PLAN_CACHE_SECONDS="1799").plan_cache_seconds == 1799
