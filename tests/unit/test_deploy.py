"""Deployment artefacts: docker-compose.yml, the two images, and terraform/.

No Docker engine and no AWS provider are reachable here (docs/deploy.md says what was and was not run), so
these tests check what can be checked without them, with real tools wherever one exists:

- the compose file against the compose-spec JSON schema (vendored in tests/data/compose-spec.json), plus the
  semantics the schema cannot see (dependencies, health checks, secrets, profiles);
- the NGINX template rendered with the compose and ECS environments by the renderer the e2e tests use
  (gateway.tools.nginxconf), then checked by the real ``nginx -t``;
- the images' helper scripts run for real (health check against a live HTTP server, gunicorn settings,
  the .env maker);
- every .tf file parsed with python-hcl2, the module's interface and IAM checked statement by statement,
  checkov with zero failed checks, ``terraform fmt -check`` when a terraform binary exists.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import runpy
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import hcl2
import jsonschema  # type: ignore[import-untyped, unused-ignore]
import pytest
import yaml

from gateway.config import Settings
from gateway.tools.nginxconf import NGINX_DIR, render_text
from tests.unit.test_nginxconf import run_check_script

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
SCHEMA_FILE = REPO / "tests" / "data" / "compose-spec.json"
DOCKER = REPO / "docker"
TERRAFORM = REPO / "terraform"
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
NGINX_BIN = Path("/usr/sbin/nginx")

# Environment names whose values are secrets: they may only come from .env (``${NAME:?...}``), never inline.
SECRET_NAME = re.compile(r"(SECRET|PASSWORD|SIGNING_KEYS|API_KEYS|DEID_KEY|TOKEN$)")
# The secrets docker/make-env.sh generates.
GENERATED_SECRETS = (
    "DICOMGW_SIGNING_KEYS",
    "DICOMGW_API_KEYS",
    "MINIO_ROOT_PASSWORD",
    "DICOMGW_S3_SECRET_ACCESS_KEY",
    "POSTGRES_PASSWORD",
)
S3_HOST = "s3.eu-central-1.amazonaws.com"
TEMPLATE_VARIABLE = re.compile(r"\$\{(DICOMGW_[A-Z0-9_]+)\}")


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


class MissingVariable(Exception):
    """A ``${NAME:?message}`` whose variable is unset, as ``docker compose`` reports it."""


_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: ``$$``, ``$NAME``, ``${NAME}``, ``${NAME:-default}``, ``${NAME-default}``,
    ``${NAME:?err}``, ``${NAME?err}`` (the compose-spec forms; nested expressions are not used here)."""

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        present = name in env
        value = env.get(name, "")
        if op in (":-", "-"):
            use_default = (not value) if op == ":-" else not present
            return arg if use_default else value
        if op in (":?", "?"):
            if (not value) if op == ":?" else not present:
                raise MissingVariable(f"{name}: {arg}")
            return value
        return value

    return _INTERPOLATION.sub(replace, value)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    return node


def strings_in(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from strings_in(item)
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings_in(value)


def read_env_file(path: Path) -> dict[str, str]:
    """A .env as compose reads it (KEY=VALUE, quotes stripped, comments and blanks ignored)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def make_env(tmp_path: Path) -> Path:
    out = tmp_path / ".env"
    subprocess.run(["sh", str(DOCKER / "make-env.sh"), str(ENV_EXAMPLE), str(out)], check=True, capture_output=True)
    return out


def environment_of(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def template_variables() -> set[str]:
    names: set[str] = set()
    for template in (NGINX_DIR / "templates").rglob("*.template"):
        names.update(TEMPLATE_VARIABLE.findall(template.read_text()))
    return names


def _unquote(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == '"' and text[-1] == '"' else text


def normalise_hcl(node: Any) -> Any:
    """python-hcl2 8 keeps quotes around keys and strings and adds ``__is_block__``/``__comments__`` markers;
    older releases do neither. Reduce both to plain dicts, lists and unquoted strings."""
    if isinstance(node, dict):
        return {
            _unquote(key): normalise_hcl(value)
            for key, value in node.items()
            if key not in ("__is_block__", "__comments__", "__start_line__", "__end_line__")
        }
    if isinstance(node, list):
        return [normalise_hcl(item) for item in node]
    if isinstance(node, str):
        return _unquote(node)
    return node


def load_tf(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        parsed = normalise_hcl(hcl2.load(handle))
    assert isinstance(parsed, dict)
    return parsed


def tf_files() -> list[Path]:
    return sorted(path for path in TERRAFORM.rglob("*.tf") if ".terraform" not in path.parts)


def module_blocks(kind: str, directory: Path = TERRAFORM) -> dict[str, Any]:
    """All blocks of one kind (``variable``, ``output``...) in a directory, by name."""
    blocks: dict[str, Any] = {}
    for path in sorted(directory.glob("*.tf")):
        for entry in load_tf(path).get(kind, []):
            for name, body in entry.items():
                assert name not in blocks, f"{kind} {name} declared twice"
                blocks[name] = body
    return blocks


def tf_resource(kind: str, name: str) -> dict[str, Any]:
    for path in sorted(TERRAFORM.glob("*.tf")):
        for entry in load_tf(path).get("resource", []):
            if kind in entry and name in entry[kind]:
                body = entry[kind][name]
                assert isinstance(body, dict)
                return body
    raise AssertionError(f"resource {kind}.{name} not found")


def tf_data(kind: str, name: str) -> dict[str, Any]:
    for path in sorted(TERRAFORM.glob("*.tf")):
        for entry in load_tf(path).get("data", []):
            if kind in entry and name in entry[kind]:
                body = entry[kind][name]
                assert isinstance(body, dict)
                return body
    raise AssertionError(f"data {kind}.{name} not found")


def tf_locals() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in sorted(TERRAFORM.glob("*.tf")):
        for entry in load_tf(path).get("locals", []):
            merged.update(entry)
    return merged


def statements(policy: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {statement["sid"]: statement for statement in policy["statement"]}


def nginx_test(tmp_path: Path, values: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """Render nginx/templates with ``values`` (the e2e renderer) under a main file shaped like the official
    image's, and run the real ``nginx -t`` on it."""
    prefix = tmp_path / "nginx"
    conf_d = prefix / "conf.d"
    for template in sorted((NGINX_DIR / "templates").rglob("*.template")):
        target = conf_d / template.relative_to(NGINX_DIR / "templates").with_suffix("")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render_text(template.read_text(), values))
    temp = prefix / "temp"
    temp.mkdir()
    mime = "include /etc/nginx/mime.types;" if Path("/etc/nginx/mime.types").is_file() else ""
    (prefix / "nginx.conf").write_text(
        # the njs module, as docker/nginx.Dockerfile loads it into the image's main file (Debian's path here)
        "load_module /usr/lib/nginx/modules/ngx_http_js_module.so;\n"
        f"error_log stderr notice;\npid {prefix}/nginx.pid;\nevents {{ worker_connections 1024; }}\n"
        f"http {{\n {mime}\n default_type application/octet-stream;\n access_log off;\n"
        f" client_body_temp_path {temp}/cb; proxy_temp_path {temp}/px; fastcgi_temp_path {temp}/fc;\n"
        f" uwsgi_temp_path {temp}/uw; scgi_temp_path {temp}/sc;\n"
        # the official image's main file: include /etc/nginx/conf.d/*.conf (snippets live one level down)
        f" include conf.d/*.conf;\n}}\n"
    )
    return subprocess.run(
        [str(NGINX_BIN), "-t", "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=30,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ----------------------------------------------------------------------------------------------------
# docker-compose.yml
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema["$id"] == "compose_spec.json"
    return schema


def schema_errors(schema: Mapping[str, Any], document: Any) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(document)]


def test_compose_file_is_valid_against_the_compose_spec_schema(compose_schema: dict[str, Any], tmp_path: Path) -> None:
    assert schema_errors(compose_schema, load_compose()) == []
    # and once interpolated with a real .env, as compose validates after interpolation
    resolved = interpolate_tree(load_compose(), read_env_file(make_env(tmp_path)))
    assert schema_errors(compose_schema, resolved) == []


def test_schema_is_strict_enough_to_catch_a_typo(compose_schema: dict[str, Any]) -> None:
    compose = load_compose()
    compose["services"]["gateway"]["healthchek"] = compose["services"]["gateway"].pop("healthcheck")
    compose["services"]["nginx"]["depends_on"]["gateway"]["condition"] = "service_ready"
    errors = schema_errors(compose_schema, compose)
    assert any("healthchek" in error for error in errors), errors
    assert any("service_ready" in error for error in errors), errors


@pytest.mark.parametrize(
    ("service", "heartbeat_age", "healthy"),
    [
        ("retention", 60, True),
        ("retention", 2 * 86400, False),  # the last daily run failed, or never ended
        ("retention", None, False),  # no run has succeeded yet
        ("audit-collector", 10, True),
        ("audit-collector", 120, False),
    ],
)
def test_a_heartbeat_services_health_check_reads_the_heartbeats_age(
    tmp_path: Path, service: str, heartbeat_age: int | None, healthy: bool
) -> None:
    """README: `--heartbeat` is touched after each good run, and compose's health check reads its age. The
    retention service's check was `test -f /tmp/retention.ok`: after one good run it stayed healthy forever, every
    later daily run failing unseen. Each check runs here as compose runs it (its CMD form, its own interpreter
    standing in for the image's), on a heartbeat of the given age."""
    service_spec = load_compose()["services"][service]
    command = service_spec["command"]
    heartbeat = command[command.index("--heartbeat") + 1]
    kind, *argv = service_spec["healthcheck"]["test"]
    assert kind == "CMD"
    assert argv[:2] == ["python", "-c"] and heartbeat in argv[2]
    here = tmp_path / "heartbeat"
    if heartbeat_age is not None:
        here.touch()
        then = time.time() - heartbeat_age
        os.utime(here, (then, then))
    check = subprocess.run([sys.executable, "-c", argv[2].replace(heartbeat, str(here))], capture_output=True)
    assert (check.returncode == 0) is healthy, check


def test_services_are_the_documented_stack() -> None:
    services = load_compose()["services"]
    assert set(services) == {
        "nginx",
        "gateway",
        "minio",
        "minio-init",
        "postgres",
        "seed",
        "retention",
        "audit-collector",
        "derive",
    }
    # the audit collector reads the log NGINX writes, on the volume both mount (README, "Access audit")
    collector = services["audit-collector"]
    assert collector["image"] == services["gateway"]["image"]
    assert collector["command"][:6] == ["dicom-gateway", "audit", "collect", "--follow", "--echo", "--heartbeat"]
    log = services["nginx"]["environment"]["DICOMGW_ACCESS_LOG"]
    assert collector["environment"]["DICOMGW_ACCESS_LOG"] == log
    assert "nginx-logs:/var/log/dgw" in services["nginx"]["volumes"]
    assert "nginx-logs:/var/log/dgw:ro" in collector["volumes"]
    database = services["gateway"]["environment"]["DICOMGW_DATABASE_URL"]
    assert collector["environment"]["DICOMGW_DATABASE_URL"] == database
    assert services["nginx"]["build"] == {"context": ".", "dockerfile": "docker/nginx.Dockerfile"}
    assert services["gateway"]["build"] == {"context": ".", "dockerfile": "docker/gateway.Dockerfile"}
    # the seed runs the gateway image: same build, same tag, so compose never pulls it
    assert services["seed"]["build"] == services["gateway"]["build"]
    assert services["seed"]["image"] == services["gateway"]["image"]
    assert services["seed"]["command"][:3] == ["dicom-gateway", "stack", "seed"]
    # retention runs the gateway image's own command, on the gateway's catalog volume and bucket
    assert services["retention"]["image"] == services["gateway"]["image"]
    assert services["retention"]["command"][:3] == ["dicom-gateway", "retention", "run"]
    assert services["retention"]["volumes"] == services["gateway"]["volumes"]
    for name in ("DICOMGW_STORAGE_URL", "DICOMGW_DATABASE_URL", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID"):
        assert services["retention"]["environment"][name] == services["gateway"]["environment"][name], name
    # the derivative worker runs the gateway image too, with the gateway's storage and catalog
    assert services["derive"]["image"] == services["gateway"]["image"]
    assert services["derive"]["command"] == ["python", "-m", "gateway.derive"]
    for name in ("DICOMGW_STORAGE_URL", "DICOMGW_DATABASE_URL"):
        assert services["derive"]["environment"][name] == services["gateway"]["environment"][name]


def test_every_dependency_exists_and_is_waited_for_properly() -> None:
    services = load_compose()["services"]
    for name, service in services.items():
        for target, spec in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown service {target}"
            condition = spec["condition"]
            if condition == "service_healthy":
                check = services[target].get("healthcheck")
                assert check and not check.get("disable"), f"{name} waits for {target}, which has no healthcheck"
                assert check["test"][0] in ("CMD", "CMD-SHELL")
            else:
                # one-shots are waited for until they exit 0, and must not be restarted
                assert condition == "service_completed_successfully", f"{name} -> {target}: {condition}"
                assert services[target]["restart"] == "no"


def test_long_running_services_have_healthchecks_and_restart() -> None:
    for name, service in load_compose()["services"].items():
        if service.get("restart") == "no":
            continue
        assert service["restart"] == "unless-stopped", name
        assert "healthcheck" in service, f"{name} runs forever but has no healthcheck"


def test_only_nginx_publishes_a_port_and_on_loopback_by_default() -> None:
    services = load_compose()["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"nginx"}
    (port,) = services["nginx"]["ports"]
    assert interpolate(port, {}) == "127.0.0.1:8080:8080"
    assert interpolate(port, {"DICOMGW_BIND": "0.0.0.0", "DICOMGW_PORT": "9443"}) == "0.0.0.0:9443:8080"


def test_postgres_is_an_optional_profile_and_sqlite_lives_in_a_volume() -> None:
    services = load_compose()["services"]
    assert services["postgres"]["profiles"] == ["postgres"]
    # no DETAIL line quoting a refused row's values in PostgreSQL's own log (Terraform's parameter group alike)
    assert services["postgres"]["command"] == ["postgres", "-c", "log_error_verbosity=terse"]
    assert all("profiles" not in service for name, service in services.items() if name != "postgres")
    dependency = services["gateway"]["depends_on"]["postgres"]
    assert dependency == {"condition": "service_healthy", "required": False}
    gateway_env = environment_of(services["gateway"])
    assert interpolate(gateway_env["DICOMGW_DATABASE_URL"], {}) == "sqlite:////var/lib/dicomgw/catalog.db"
    assert "gateway-data:/var/lib/dicomgw" in services["gateway"]["volumes"]
    assert (
        interpolate(gateway_env["DICOMGW_DATABASE_URL"], {"DICOMGW_DATABASE_URL": "postgresql://u:p@postgres/db"})
        == "postgresql://u:p@postgres/db"
    )


def test_no_secret_is_written_inline() -> None:
    for name, service in load_compose()["services"].items():
        for key, value in environment_of(service).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", value), f"{name}.{key} must be ${{VAR:?...}}"
            # no credentials in a default (e.g. a database URL), no long random-looking literal
            try:
                default = interpolate(value, {})
            except MissingVariable:  # required from .env: checked above
                default = ""
            assert not re.search(r"://[^/@\s]+:[^/@\s]+@", default), f"{name}.{key} has credentials inline"
            assert not re.search(r"[0-9a-fA-F]{32,}|[A-Za-z0-9+/]{40,}", value), f"{name}.{key} looks like a key"


def test_a_missing_secret_stops_compose_with_a_message_naming_it() -> None:
    with pytest.raises(MissingVariable, match=r"DICOMGW_SIGNING_KEYS: run sh docker/make-env.sh"):
        interpolate_tree(load_compose(), read_env_file(ENV_EXAMPLE))


def test_env_example_names_every_variable_and_holds_no_secret() -> None:
    example = read_env_file(ENV_EXAMPLE)
    referenced = {
        match.group("name") or match.group("bare")
        for value in strings_in(load_compose())
        for match in _INTERPOLATION.finditer(value)
        if not match.group("escaped")
    }
    assert "DICOMGW_SIGNING_KEYS" in referenced
    assert referenced <= set(example), f"missing from .env.example: {sorted(referenced - set(example))}"
    for key in GENERATED_SECRETS:
        assert example[key] == "", f"{key} must be empty in .env.example"
    assert example["DICOMGW_CORS_ORIGIN_REGEX"] == "^$"
    assert example["DICOMGW_FRAME_ANCESTORS"] == "'self'"


def test_make_env_writes_fresh_secrets_the_gateway_accepts(tmp_path: Path) -> None:
    out = make_env(tmp_path)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    env = read_env_file(out)
    secrets = [env[key] for key in GENERATED_SECRETS]
    assert all(re.fullmatch(r"[0-9a-f]{64}", value) for value in secrets), secrets
    assert len(set(secrets)) == len(secrets)
    # The gateway container's environment, interpolated as compose does, is a valid production configuration.
    gateway = environment_of(interpolate_tree(load_compose(), env)["services"]["gateway"])
    settings = Settings.from_mapping(
        {k.removeprefix("DICOMGW_"): v for k, v in gateway.items() if k.startswith("DICOMGW_")}
    )
    assert settings.mode == "production"
    assert settings.signing_keys == (env["DICOMGW_SIGNING_KEYS"],)
    assert settings.storage_url == "s3://dicom"
    assert settings.database_url == "sqlite:////var/lib/dicomgw/catalog.db"
    assert gateway["AWS_SECRET_ACCESS_KEY"] == env["DICOMGW_S3_SECRET_ACCESS_KEY"]
    # A second run never overwrites keys in use.
    before = out.read_bytes()
    again = subprocess.run(
        ["sh", str(DOCKER / "make-env.sh"), str(ENV_EXAMPLE), str(out)], capture_output=True, text=True
    )
    assert again.returncode == 1
    assert "not overwriting" in again.stderr
    assert out.read_bytes() == before


def test_the_phi_policy_set_in_env_is_the_gateways_and_retentions(tmp_path: Path) -> None:
    """README: `DICOMGW_PHI_POLICY` is the policy every upload is scanned and routed by. Set in compose's .env, it
    reached the retention service alone: the gateway ran without PHI hooks, storing identifiable uploads unscanned,
    while retention applied the same file's [retention]. Both services' settings, as compose interpolates them,
    now name the file."""
    policy = tmp_path / "policy.toml"
    shutil.copyfile(REPO / "examples" / "phi-policy.toml", policy)
    out = make_env(tmp_path)
    env = {**read_env_file(out), "DICOMGW_PHI_POLICY": str(policy)}
    services = interpolate_tree(load_compose(), env)["services"]
    for name in ("gateway", "retention"):
        values = environment_of(services[name])
        settings = Settings.from_mapping(
            {k.removeprefix("DICOMGW_"): v for k, v in values.items() if k.startswith("DICOMGW_")}
        )
        assert settings.phi_policy == policy, name


def test_two_env_files_never_share_a_secret(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = read_env_file(make_env(tmp_path / "a"))
    second = read_env_file(make_env(tmp_path / "b"))
    assert all(first[key] != second[key] for key in GENERATED_SECRETS)


def test_shell_scripts_parse() -> None:
    for script in ("make-env.sh", "minio-init.sh"):
        subprocess.run(["sh", "-n", str(DOCKER / script)], check=True)
    subprocess.run(["sh", "-n", str(TERRAFORM / "scripts" / "build-lambda.sh")], check=True)


# ----------------------------------------------------------------------------------------------------
# NGINX: the image renders the same templates the tests render
# ----------------------------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")),
    )
    result = []
    for line in text.splitlines():
        if line.strip():
            instruction, _, args = line.strip().partition(" ")
            result.append((instruction.upper(), " ".join(args.split())))
    return result


def test_nginx_image_serves_the_tested_templates_with_the_official_envsubst() -> None:
    steps = dockerfile_instructions(DOCKER / "nginx.Dockerfile")
    bases = [args for instruction, args in steps if instruction == "FROM"]
    assert bases[0] == "node:20-bookworm-slim AS viewer"
    assert re.fullmatch(r"nginx:1\.27(-bookworm)?", bases[-1])
    copies = [args for instruction, args in steps if instruction == "COPY"]
    # the directory the e2e renderer reads (gateway.tools.nginxconf.NGINX_DIR / "templates") is the one baked in
    assert NGINX_DIR / "templates" == REPO / "nginx" / "templates"
    assert "nginx/templates/ /etc/nginx/templates/" in copies
    # the settings' check runs before the official envsubst step (20-envsubst-on-templates.sh)
    assert "--chmod=0755 docker/nginx-check-env.sh /docker-entrypoint.d/15-dicomgw-check-env.sh" in copies
    ignore = (DOCKER / "nginx.Dockerfile.dockerignore").read_text().splitlines()
    assert "!docker/nginx-check-env.sh" in ignore  # in the build context: the ignore file lets in only what it names
    assert "--from=viewer /viewer/dist/ /usr/share/dicomgw/viewer/" in copies
    env = " ".join(args for instruction, args in steps if instruction == "ENV")
    assert "NGINX_ENVSUBST_TEMPLATE_DIR=/etc/nginx/templates" in env
    assert "NGINX_ENVSUBST_OUTPUT_DIR=/etc/nginx/conf.d" in env
    assert "NGINX_ENVSUBST_FILTER=^DICOMGW_" in env
    assert any(instruction == "HEALTHCHECK" and "/healthz" in args for instruction, args in steps)
    # the template's njs (hashed auth cache key) needs the module the official image ships, loaded in its main file,
    # and its regular expressions compiled (pcre_jit, main context only), as nginx/nginx.conf does for the local stack
    runs = " ".join(args for instruction, args in steps if instruction == "RUN")
    sed = "sed -i -e '1i load_module modules/ngx_http_js_module.so;' -e '1i pcre_jit on;' /etc/nginx/nginx.conf"
    assert sed in runs
    main = (NGINX_DIR / "nginx.conf").read_text().splitlines()
    assert "load_module /usr/lib/nginx/modules/ngx_http_js_module.so;" in main and "pcre_jit on;" in main


def test_viewer_stage_builds_with_npm_ci() -> None:
    runs = [args for instruction, args in dockerfile_instructions(DOCKER / "nginx.Dockerfile") if instruction == "RUN"]
    assert runs[0].startswith("npm ci")
    assert runs[1] == "npm run build"
    package = json.loads((REPO / "viewer" / "package.json").read_text())
    assert "build" in package["scripts"]
    assert (REPO / "viewer" / "package-lock.json").is_file(), "npm ci needs viewer/package-lock.json"


def test_every_template_variable_is_set_by_compose_and_by_ecs() -> None:
    names = template_variables()
    assert "DICOMGW_GATEWAY_UPSTREAM" in names  # guard: the scan found the templates
    compose_env = set(environment_of(load_compose()["services"]["nginx"]))
    ecs_env = set(tf_locals()["nginx_environment"])
    # the image's envsubst leaves an unset ${NAME} in the config verbatim: every name must be set, and nothing
    # stale may be set that no template reads any more
    assert compose_env == names, (sorted(names - compose_env), sorted(compose_env - names))
    assert ecs_env == names, (sorted(names - ecs_env), sorted(ecs_env - names))


def _compose_nginx_values(tmp_path: Path) -> dict[str, str]:
    env = read_env_file(make_env(tmp_path))
    values = environment_of(interpolate_tree(load_compose(), env)["services"]["nginx"])
    return values


def _runnable_here(values: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Container values made testable here: compose/ECS host names become loopback, ports free ones, and
    the image's /var/cache/nginx an existing temp directory (NGINX creates only a cache path's last level)."""
    local = dict(values)
    local["DICOMGW_GATEWAY_UPSTREAM"] = f"127.0.0.1:{free_port()}"
    local["DICOMGW_STORAGE_UPSTREAM"] = f"127.0.0.1:{free_port()}"
    local["DICOMGW_LISTEN"] = f"127.0.0.1:{free_port()}"
    local["DICOMGW_FILE_ORIGIN_LISTEN"] = f"127.0.0.1:{free_port()}"
    if values["DICOMGW_ACCESS_LOG"].startswith("/var/log/dgw/"):  # the log volume the audit collector reads
        local["DICOMGW_ACCESS_LOG"] = str(tmp_path / "access.log")
    assert values["DICOMGW_CACHE_DIR"] == "/var/cache/nginx"  # exists in the official image
    cache = tmp_path / "var-cache-nginx"
    cache.mkdir()
    local["DICOMGW_CACHE_DIR"] = str(cache)
    return local


@pytest.mark.skipif(not NGINX_BIN.exists(), reason="needs nginx at /usr/sbin/nginx (apt-get install nginx)")
def test_compose_environment_renders_a_config_nginx_accepts(tmp_path: Path) -> None:
    values = _compose_nginx_values(tmp_path)
    assert values["DICOMGW_CORS_ORIGIN_REGEX"] == "^$"  # never empty: an empty regex would match every origin
    assert values["DICOMGW_TLS_CONF"] == "conf.d/snippets/dgw-tls-off.conf"
    checked = run_check_script(values)  # the image's own check of them, before its envsubst step
    assert (checked.returncode, checked.stderr) == (0, "")
    result = nginx_test(tmp_path, _runnable_here(values, tmp_path))
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@pytest.mark.skipif(not NGINX_BIN.exists(), reason="needs nginx at /usr/sbin/nginx (apt-get install nginx)")
def test_ecs_environment_renders_a_config_nginx_accepts(tmp_path: Path) -> None:
    raw = tf_locals()["nginx_environment"]
    # values computed by Terraform, given what they evaluate to for a bucket and one CORS origin
    computed = {
        "DICOMGW_STORAGE_UPSTREAM": f"{S3_HOST}:443",
        "DICOMGW_STORAGE_HOST": S3_HOST,
        "DICOMGW_CORS_ORIGIN_REGEX": r"^(https://portal\.example\.org)$",
        "DICOMGW_FRAME_ANCESTORS": "'self' https://portal.example.org",
        "DICOMGW_MAX_UPLOADS": "4",  # half of one worker's default 8 threads
    }
    literal = {key: value for key, value in raw.items() if "${" not in value}
    assert set(literal) | set(computed) == set(raw)
    values = {**literal, **computed}
    assert values["DICOMGW_GATEWAY_UPSTREAM"] == "127.0.0.1:8000"  # same task, shared network namespace
    assert values["DICOMGW_STORAGE_SCHEME"] == "https"
    checked = run_check_script(values)  # the image's own check of them, before its envsubst step
    assert (checked.returncode, checked.stderr) == (0, "")
    result = nginx_test(tmp_path, _runnable_here(values, tmp_path))
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------------------------------
# the gateway image
# ----------------------------------------------------------------------------------------------------


def test_gateway_image_is_slim_non_root_and_runs_gunicorn_gthread() -> None:
    steps = dockerfile_instructions(DOCKER / "gateway.Dockerfile")
    bases = [args for instruction, args in steps if instruction == "FROM"]
    assert bases == ["python:3.11-slim AS build", "python:3.11-slim"]
    runs = " ".join(args for instruction, args in steps if instruction == "RUN")
    assert 'pip install ".[postgres]"' in runs
    users = [args for instruction, args in steps if instruction == "USER"]
    assert users == ["10001:10001"]
    final = steps[[i for i, (instruction, _) in enumerate(steps) if instruction == "FROM"][-1] :]
    names = [instruction for instruction, _ in final]
    # the data directory is declared a volume after it is chowned and before the user switch
    assert names.index("RUN") < names.index("VOLUME") < names.index("USER") < names.index("CMD")
    assert "useradd --system --uid 10001" in " ".join(args for instruction, args in final if instruction == "RUN")
    (healthcheck,) = [args for instruction, args in final if instruction == "HEALTHCHECK"]
    assert '"/usr/local/lib/dicomgw/healthcheck.py", "http://127.0.0.1:8000/healthz"' in healthcheck
    (cmd,) = [args for instruction, args in final if instruction == "CMD"]
    assert json.loads(cmd) == [
        "gunicorn",
        "--config",
        "/etc/dicomgw/gunicorn.conf.py",
        "gateway.wsgi:application",
    ]
    # the WSGI target exists
    assert re.search(r"^application = ", (REPO / "gateway" / "wsgi.py").read_text(), re.M)


def test_every_copied_path_exists() -> None:
    for dockerfile in ("gateway.Dockerfile", "nginx.Dockerfile"):
        for instruction, args in dockerfile_instructions(DOCKER / dockerfile):
            if instruction != "COPY" or args.startswith("--from="):
                continue
            for source in [arg for arg in args.split()[:-1] if not arg.startswith("--")]:  # flags: --chmod=
                assert (REPO / source).exists(), f"{dockerfile}: COPY {source} does not exist"


def load_gunicorn_config(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    for name in (
        "GUNICORN_BIND",
        "WEB_CONCURRENCY",
        "GUNICORN_THREADS",
        "GUNICORN_TIMEOUT",
        "GUNICORN_KEEPALIVE",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(DOCKER / "gunicorn.conf.py"))


def test_gunicorn_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_gunicorn_config({}, monkeypatch)
    # gthread, woken by the signal that stops it (gateway/gunicorn_worker.py), as `stack up` runs it
    assert config["worker_class"] == "gateway.gunicorn_worker.WokenThreadWorker"
    from gunicorn.util import load_class
    from gunicorn.workers.gthread import ThreadWorker

    assert issubclass(load_class(config["worker_class"]), ThreadWorker)
    assert callable(config["on_exit"])
    assert config["bind"] == "0.0.0.0:8000"
    assert config["threads"] == 8
    assert config["timeout"] == 300
    assert config["keepalive"] == 75
    assert config["accesslog"] is None  # URLs carry tokens; NGINX writes the masked log
    assert 3 <= config["workers"] <= 9
    assert config["workers"] == min(2 * len(os.sched_getaffinity(0)) + 1, 9)


def test_gunicorn_settings_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_gunicorn_config(
        {"GUNICORN_BIND": "127.0.0.1:8000", "WEB_CONCURRENCY": "5", "GUNICORN_THREADS": "16"}, monkeypatch
    )
    assert (config["bind"], config["workers"], config["threads"]) == ("127.0.0.1:8000", 5, 16)
    with pytest.raises(SystemExit, match="WEB_CONCURRENCY must be an integer"):
        load_gunicorn_config({"WEB_CONCURRENCY": "many"}, monkeypatch)
    with pytest.raises(SystemExit, match="GUNICORN_THREADS must be at least 1"):
        load_gunicorn_config({"GUNICORN_THREADS": "0"}, monkeypatch)


@pytest.fixture
def health_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            status = {"/healthz": 200, "/down": 503, "/moved": 302}.get(self.path, 404)
            self.send_response(status)
            if status == 302:
                self.send_header("Location", "/healthz")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(("path", "code"), [("/healthz", 0), ("/down", 1), ("/moved", 1), ("/missing", 1)])
def test_healthcheck_script_exit_codes(health_server: str, path: str, code: int) -> None:
    # run exactly as Docker and ECS do: a fresh interpreter, the URL as the only argument
    result = subprocess.run(
        [sys.executable, str(DOCKER / "healthcheck.py"), health_server + path], capture_output=True, text=True
    )
    assert result.returncode == code, result.stderr
    assert result.stdout == ""


def test_healthcheck_script_fails_on_refused_connection_and_bad_url() -> None:
    refused = subprocess.run(
        [sys.executable, str(DOCKER / "healthcheck.py"), f"http://127.0.0.1:{free_port()}/healthz"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 1
    assert "unhealthy: ConnectionRefusedError" in refused.stderr
    bad = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py"), "https://example.org/"], capture_output=True)
    assert bad.returncode == 1


# ----------------------------------------------------------------------------------------------------
# Terraform
# ----------------------------------------------------------------------------------------------------


def test_every_tf_file_parses() -> None:
    files = tf_files()
    names = {path.relative_to(TERRAFORM).as_posix() for path in files}
    assert {"main.tf", "variables.tf", "outputs.tf", "versions.tf"} <= names
    assert {"examples/complete/main.tf", "examples/complete/versions.tf"} <= names
    for path in files:
        assert isinstance(load_tf(path), dict), path


@pytest.mark.parametrize("directory", [TERRAFORM, TERRAFORM / "examples" / "complete"], ids=["module", "example"])
def test_every_variable_is_described_and_typed(directory: Path) -> None:
    variables = module_blocks("variable", directory)
    assert variables
    for name, body in variables.items():
        assert len(body.get("description", "")) >= 10, f"variable {name} needs a description"
        assert body.get("type"), f"variable {name} needs a type"
    for name, body in module_blocks("output", directory).items():
        assert len(body.get("description", "")) >= 10, f"output {name} needs a description"


def test_provider_versions_are_pinned_with_an_upper_bound() -> None:
    for directory in (TERRAFORM, TERRAFORM / "examples" / "complete"):
        (block,) = load_tf(directory / "versions.tf")["terraform"]
        assert "<" in block["required_version"]
        for providers in block["required_providers"]:
            for name, spec in providers.items():
                version = spec["version"]
                assert re.search(r"(<|~>)", version), f"{name} {version} has no upper bound"
                assert spec["source"] == f"hashicorp/{name}"


def test_example_passes_every_required_input_and_nothing_unknown() -> None:
    variables = module_blocks("variable")
    required = {name for name, body in variables.items() if "default" not in body}
    (module,) = load_tf(TERRAFORM / "examples" / "complete" / "main.tf")["module"]
    arguments = set(module["dicom_gateway"]) - {"source"}
    assert module["dicom_gateway"]["source"] == "../../"
    assert required <= arguments, f"example misses {sorted(required - arguments)}"
    assert arguments <= set(variables), f"example passes unknown {sorted(arguments - set(variables))}"


def test_residency_region_is_enforced_against_the_provider() -> None:
    key = tf_resource("aws_kms_key", "this")
    assert key["enable_key_rotation"] is True
    (lifecycle,) = key["lifecycle"]
    (precondition,) = lifecycle["precondition"]
    assert precondition["condition"] == "${local.region == var.region}"


def test_data_bucket_is_private_encrypted_versioned_and_tls_only() -> None:
    block = tf_resource("aws_s3_bucket_public_access_block", "data")
    assert all(
        block[key] is True
        for key in (
            "block_public_acls",
            "block_public_policy",
            "ignore_public_acls",
            "restrict_public_buckets",
        )
    )
    (rule,) = tf_resource("aws_s3_bucket_server_side_encryption_configuration", "data")["rule"]
    (default,) = rule["apply_server_side_encryption_by_default"]
    assert default == {"sse_algorithm": "aws:kms", "kms_master_key_id": "${aws_kms_key.this.arn}"}
    (versioning,) = tf_resource("aws_s3_bucket_versioning", "data")["versioning_configuration"]
    assert versioning["status"] == "Enabled"
    assert tf_resource("aws_s3_bucket_logging", "data")["target_bucket"] == "${aws_s3_bucket.logs.id}"
    policy = statements(tf_data("aws_iam_policy_document", "data_bucket"))
    tls = policy["DenyInsecureTransport"]
    assert tls["effect"] == "Deny" and tls["actions"] == ["s3:*"]
    assert tls["condition"] == [{"test": "Bool", "variable": "aws:SecureTransport", "values": ["false"]}]


def test_lifecycle_rules_cover_incoming_and_quarantine() -> None:
    rules = {rule["id"]: rule for rule in tf_resource("aws_s3_bucket_lifecycle_configuration", "data")["rule"]}
    assert rules["incoming-expire-unprocessed"]["filter"] == [{"prefix": "incoming/"}]
    assert rules["incoming-expire-unprocessed"]["expiration"] == [{"days": "${var.incoming_expiration_days}"}]
    assert rules["quarantine-expire"]["filter"] == [{"prefix": "quarantine/"}]
    assert rules["quarantine-expire"]["expiration"] == [{"days": "${var.quarantine_expiration_days}"}]
    assert rules["studies-keep-previous-versions"]["noncurrent_version_expiration"] == [
        {"noncurrent_days": "${var.noncurrent_version_expiration_days}"}
    ]
    # README "Lifecycle": a deleted study's previous versions are gone after this window (30 days by default)
    assert module_blocks("variable")["noncurrent_version_expiration_days"]["default"] == 30
    assert rules["studies-keep-previous-versions"]["expiration"] == [{"expired_object_delete_marker": True}]


def test_task_role_reaches_only_the_prefixes_the_gateway_needs() -> None:
    policy = statements(tf_data("aws_iam_policy_document", "task"))
    assert set(policy) == {"ReadObjects", "WriteObjects", "DeleteObjects", "ListOwnPrefixes", "UseBucketKey"}
    everything = [action for statement in policy.values() for action in statement["actions"]]
    assert not any(action.endswith("*") for action in everything), everything
    assert policy["ReadObjects"]["actions"] == ["s3:GetObject"]
    assert policy["WriteObjects"]["actions"] == ["s3:PutObject"]
    assert policy["WriteObjects"]["resources"] == [
        "${aws_s3_bucket.data.arn}/studies/*",
        "${aws_s3_bucket.data.arn}/quarantine/*",
    ]
    assert policy["DeleteObjects"]["actions"] == ["s3:DeleteObject"]
    # ternaries on enable_quarantine_admin: (prefixes when enabled, prefixes when not); python-hcl2 releases
    # differ in how they quote the lists, so compare the prefixes themselves
    for name, enabled, disabled in (
        ("task_read_prefixes", ["studies/*", "quarantine/*"], ["studies/*"]),
        ("task_delete_prefixes", ["incoming/*", "studies/*", "quarantine/*"], ["incoming/*", "studies/*"]),
    ):
        expression = tf_locals()[name]
        assert expression.startswith("${var.enable_quarantine_admin ?"), expression
        assert re.findall(r"[\"']([a-z]+/\*)[\"']", expression) == enabled + disabled, expression
    assert policy["UseBucketKey"]["resources"] == ["${aws_kms_key.this.arn}"]


def test_upload_hook_is_the_gateway_code_with_vpc_dlq_concurrency_and_tracing() -> None:
    function = tf_resource("aws_lambda_function", "upload_hook")
    assert function["handler"] == "gateway.lambda_handler.handler"
    assert function["runtime"] == "python3.11"  # the container's Python
    assert function["filename"] == "${var.lambda_package}"
    assert function["reserved_concurrent_executions"] == "${var.lambda_reserved_concurrency}"
    assert function["tracing_config"] == [{"mode": "Active"}]
    assert function["dead_letter_config"] == [{"target_arn": "${aws_sqs_queue.upload_hook_dlq.arn}"}]
    assert function["vpc_config"][0]["subnet_ids"] == "${var.private_subnet_ids}"
    variables = function["environment"][0]["variables"]
    assert not any(SECRET_NAME.search(key) and not key.endswith("_SECRET_ARN") for key in variables)
    (notification,) = tf_resource("aws_s3_bucket_notification", "data")["lambda_function"]
    assert notification["filter_prefix"] == "incoming/"
    assert notification["events"] == ["s3:ObjectCreated:*"]
    hook = statements(tf_data("aws_iam_policy_document", "upload_hook"))
    assert hook["TakeDirectUploads"]["resources"] == ["${aws_s3_bucket.data.arn}/incoming/*"]
    assert hook["WriteHookResults"]["resources"] == [
        "${aws_s3_bucket.data.arn}/studies/*",
        "${aws_s3_bucket.data.arn}/quarantine/*",
    ]


def test_retention_runs_on_a_schedule_with_least_privilege() -> None:
    function = tf_resource("aws_lambda_function", "retention")
    assert function["handler"] == "gateway.lambda_handler.retention"
    assert function["filename"] == "${var.lambda_package}"  # the same gateway package as the upload hook
    assert function["reserved_concurrent_executions"] == 1
    assert function["dead_letter_config"] == [{"target_arn": "${aws_sqs_queue.retention_dlq.arn}"}]
    variables = function["environment"][0]["variables"]
    assert variables["DICOMGW_PHI_POLICY"] == "${var.retention_policy_path}"
    assert not any(SECRET_NAME.search(key) and not key.endswith("_SECRET_ARN") for key in variables)
    rule = tf_resource("aws_cloudwatch_event_rule", "retention")
    assert rule["schedule_expression"] == "${var.retention_schedule}"
    assert tf_resource("aws_cloudwatch_event_target", "retention")["arn"] == "${aws_lambda_function.retention.arn}"
    permission = tf_resource("aws_lambda_permission", "events_invoke_retention")
    assert permission["principal"] == "events.amazonaws.com"
    assert permission["source_arn"] == "${aws_cloudwatch_event_rule.retention.arn}"
    policy = statements(tf_data("aws_iam_policy_document", "retention"))
    assert set(policy) == {
        "DeleteExpiredObjects",
        "ListStudies",
        "DecryptSecretsAndQueue",
        "DeadLetters",
        "ReadGatewaySecrets",
    }
    everything = [action for statement in policy.values() for action in statement["actions"]]
    assert not any(action.endswith("*") for action in everything), everything
    assert "s3:DeleteObjectVersion" not in everything  # previous versions expire by lifecycle, never by us
    assert policy["DeleteExpiredObjects"]["resources"] == ["${aws_s3_bucket.data.arn}/studies/*"]
    (condition,) = policy["ListStudies"]["condition"]
    assert condition["values"] == ["studies/*"]


def test_alb_is_https_with_redirect_http2_and_strict_headers() -> None:
    alb = tf_resource("aws_lb", "this")
    assert alb["enable_http2"] is True
    assert alb["drop_invalid_header_fields"] is True
    assert alb["internal"] is False
    https = tf_resource("aws_lb_listener", "https")
    assert (https["port"], https["protocol"], https["certificate_arn"]) == (
        443,
        "HTTPS",
        "${var.certificate_arn}",
    )
    # TLS ends at the ALB, so it sends HSTS (NGINX sends it only over its own TLS)
    assert https["routing_http_response_strict_transport_security_header_value"] == "max-age=63072000"
    (redirect_action,) = tf_resource("aws_lb_listener", "http_redirect")["default_action"]
    assert redirect_action["redirect"] == [{"port": "443", "protocol": "HTTPS", "status_code": "HTTP_301"}]


def test_database_is_private_encrypted_and_protected() -> None:
    db = tf_resource("aws_db_instance", "this")
    assert db["publicly_accessible"] is False
    assert db["storage_encrypted"] is True
    assert db["manage_master_user_password"] is True
    assert db["deletion_protection"] == "${var.deletion_protection}"
    assert module_blocks("variable")["deletion_protection"]["default"] is True
    parameters = {p["name"]: p["value"] for p in tf_resource("aws_db_parameter_group", "this")["parameter"]}
    assert parameters["rds.force_ssl"] == "1"
    assert parameters["log_parameter_max_length"] == "0"  # no bind values (PHI) in the logs
    assert parameters["log_error_verbosity"] == "terse"  # no DETAIL line quoting a refused row's values


def test_both_containers_run_read_only_and_the_gateway_as_its_uid() -> None:
    definitions = tf_locals()["container_definitions"]
    by_name = {definition["name"]: definition for definition in definitions}
    assert set(by_name) == {"gateway", "nginx", "audit-collector"}
    assert all(definition["readonlyRootFilesystem"] is True for definition in definitions)
    assert by_name["gateway"]["user"] == "10001:10001"
    # the audit collector sidecar: the gateway's image and uid, NGINX's log volume read-only, the catalog's URL
    collector = by_name["audit-collector"]
    assert (collector["image"], collector["user"]) == (by_name["gateway"]["image"], "10001:10001")
    logs = {"sourceVolume": "nginx-logs", "containerPath": "/var/log/dgw"}
    assert {**logs, "readOnly": True} in collector["mountPoints"]
    assert {**logs, "readOnly": False} in by_name["nginx"]["mountPoints"]
    assert [s["name"] for s in collector["secrets"]] == ["DICOMGW_DATABASE_URL"]
    assert by_name["nginx"]["dependsOn"] == [{"containerName": "gateway", "condition": "HEALTHY"}]
    secrets = tf_locals()["gateway_secrets"]
    assert set(secrets) == {"DICOMGW_SIGNING_KEYS", "DICOMGW_API_KEYS", "DICOMGW_DATABASE_URL"}
    # Nothing secret among the plain environment variables of either container.
    assert not any(SECRET_NAME.search(key) for key in tf_locals()["gateway_environment"])


def test_every_checkov_skip_is_justified() -> None:
    skips = 0
    for path in [*tf_files(), DOCKER / "gateway.Dockerfile", DOCKER / "nginx.Dockerfile"]:
        for line in path.read_text().splitlines():
            if "checkov:skip" in line:
                skips += 1
                pattern = r"\s*#\s?checkov:skip=CKV(2?_AWS|_DOCKER)_\d+:\S.{30,}"
                assert re.fullmatch(pattern, line), f"{path.name}: {line.strip()}"
    assert skips > 0


def _require_checkov() -> None:
    if not CHECKOV.exists():
        pytest.fail(
            f"{CHECKOV} is missing: python3 -m venv .venv-checkov && "
            ".venv-checkov/bin/pip install 'checkov>=3,<4' (make test does this)"
        )


# checkov pins its own python-hcl2: nothing of this interpreter's path may leak into its virtualenv.
# BC_SKIP_MAPPING only skips downloading the platform's guideline links (no network here); the same checks run.
CHECKOV_ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "BC_SKIP_MAPPING": "TRUE"}


@pytest.mark.parametrize(("directory", "minimum_passed"), [("terraform", 200), ("docker", 20)])
def test_plain_checkov_run_passes(directory: str, minimum_passed: int) -> None:
    """``checkov -d terraform`` exactly as a user runs it: every framework (secrets included), no options."""
    _require_checkov()
    result = subprocess.run(
        [str(CHECKOV), "-d", directory], cwd=REPO, capture_output=True, text=True, timeout=600, env=CHECKOV_ENV
    )
    summaries = re.findall(
        r"^Passed checks: (\d+), Failed checks: (\d+), Skipped checks: \d+(.*)$", result.stdout, re.M
    )
    assert summaries, result.stdout[-2000:] + result.stderr[-2000:]
    failed = re.findall(r"^Check: (\S+): .*\n\tFAILED for resource: (.*)\n\tFile: (.*)$", result.stdout, re.M)
    assert failed == []
    assert all(count == "0" for _, count, _ in summaries)
    assert all(rest == "" for _, _, rest in summaries)  # no ", Parsing errors: N"
    assert sum(int(passed) for passed, _, _ in summaries) >= minimum_passed  # it really scanned something
    assert result.returncode == 0, result.stderr[-2000:]


def terraform_binary() -> str | None:
    for candidate in ("terraform", "tofu"):
        found = shutil.which(candidate)
        if found:
            return found
    return "/usr/local/bin/terraform" if Path("/usr/local/bin/terraform").exists() else None


def test_terraform_fmt_check() -> None:
    binary = terraform_binary()
    if binary is None:
        pytest.skip(
            "no terraform or tofu binary on PATH or at /usr/local/bin/terraform; "
            "no registry we reach ships one (docs/deploy.md)"
        )
    result = subprocess.run(
        [binary, "fmt", "-check", "-recursive", "-diff"],
        cwd=TERRAFORM,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_terraform_refuses_frame_ancestors_as_stack_up_does(tmp_path: Path) -> None:
    """variables.tf's validation of ``frame_ancestors``, run by Terraform itself: the variable alone needs no provider,
    so ``plan`` evaluates it offline. The same sources are accepted and refused as by ``stack up`` and the NGINX
    image (tests/unit/test_nginxconf.py)."""
    binary = terraform_binary()
    if binary is None:
        pytest.skip("no terraform or tofu binary on PATH or at /usr/local/bin/terraform (docs/deploy.md)")
    variables = (TERRAFORM / "variables.tf").read_text()
    (block,) = re.findall(r'^variable "frame_ancestors" \{.*?^\}$', variables, re.M | re.S)
    (tmp_path / "main.tf").write_text(block + '\noutput "sent" {\n  value = join(" ", var.frame_ancestors)\n}\n')
    env = {**os.environ, "TF_IN_AUTOMATION": "1"}
    init = [binary, "init", "-input=false"]
    subprocess.run(init, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=120)

    def plan(sources: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [binary, "plan", "-input=false", "-no-color", f"-var=frame_ancestors={json.dumps(sources)}"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )

    accepted = plan(["'self'", "https://*.example.org:8443/viewer/", "https:", "capacitor://localhost", "a.example."])
    assert accepted.returncode == 0, accepted.stderr
    sent = "'self' https://*.example.org:8443/viewer/ https: capacitor://localhost a.example."
    assert f'sent = "{sent}"' in accepted.stdout
    # the CORS regex main.tf builds from cors_origins passes the NGINX image's check of it
    (local,) = re.findall(r"^  cors_origin_regex = .*$", (TERRAFORM / "main.tf").read_text(), re.M)
    (tmp_path / "cors.tf").write_text(
        'variable "cors_origins" {\n  type = list(string)\n}\nlocals {\n' + local + '\n}\n'
        'output "cors" {\n  value = local.cors_origin_regex\n}\n'
    )
    origins = ["https://portal.example.org:8443", "capacitor://localhost", "my-app+web://localhost"]
    built = subprocess.run(
        [binary, "plan", "-input=false", "-no-color", "-var=frame_ancestors=[\"'self'\"]",
         f"-var=cors_origins={json.dumps(origins)}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert built.returncode == 0, built.stderr
    (cors,) = re.findall(r'cors *= "(.*)"', built.stdout)
    regex = cors.replace("\\\\", "\\")  # plan shows the string as HCL writes it
    assert regex == r"^(https://portal\.example\.org:8443|capacitor://localhost|my-app\+web://localhost)$"
    assert re.fullmatch(regex, "my-app+web://localhost") and not re.fullmatch(regex, "my-appppweb://localhost")
    checked = run_check_script({"DICOMGW_CORS_ORIGIN_REGEX": regex})
    assert (checked.returncode, checked.stderr) == (0, "")
    (tmp_path / "cors.tf").unlink()

    for refused in (
        ["self"],
        ["https://a.example,https://b.example"],
        ["'none'", "https://portal.example.org"],
        [],
        ['https://a.example" always; add_header X "1'],
        ["https://a.example/$host"],
        ["'self' https://portal.example.org"],  # two sources in one entry: each entry is one source
        ["https://klinik-müller.example"],  # an IDN host is written in punycode, as browsers send it
    ):
        answer = plan(refused)
        assert answer.returncode == 1, refused
        assert "frame_ancestors: one CSP source per entry" in " ".join(answer.stderr.split()), answer.stderr


def test_terraform_validate_with_a_local_provider_mirror(tmp_path: Path) -> None:
    """``terraform validate`` needs the AWS provider, which only the HashiCorp registry serves. Where a
    mirror exists (DICOMGW_TF_PLUGIN_DIR, from ``terraform providers mirror`` on a connected host), run it."""
    binary = terraform_binary()
    plugin_dir = os.environ.get("DICOMGW_TF_PLUGIN_DIR", "")
    if binary is None or not plugin_dir:
        pytest.skip("terraform validate needs the AWS provider: set DICOMGW_TF_PLUGIN_DIR to a provider mirror")
    example = tmp_path / "terraform"
    shutil.copytree(TERRAFORM, example, ignore=shutil.ignore_patterns(".terraform*"))
    workdir = example / "examples" / "complete"
    env = {**os.environ, "TF_IN_AUTOMATION": "1"}
    subprocess.run(
        [binary, "init", "-backend=false", "-input=false", f"-plugin-dir={plugin_dir}"],
        cwd=workdir,
        check=True,
        env=env,
        capture_output=True,
    )
    result = subprocess.run([binary, "validate", "-no-color"], cwd=workdir, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
