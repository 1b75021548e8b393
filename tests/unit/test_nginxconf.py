"""gateway.tools.nginxconf: envsubst-like rendering, the CORS regex, and a full render that ``nginx -t`` accepts
(plain, TLS and S3 variants), with nothing written outside the test's temporary folder."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gateway.tools.nginxconf import NGINX_DIR, cors_regex, frame_ancestors, render, render_text
from gateway.tools.stack import NGINX, Stack, StackError, free_port, self_signed_certificate

# -- render_text ---------------------------------------------------------------------------------------------------


def test_render_text_substitutes_only_braced_dicomgw_names() -> None:
    text = "listen ${DICOMGW_LISTEN}; set $dgw_x $host; ${OTHER} $DICOMGW_LISTEN ${dicomgw_listen} ${DICOMGW_LISTEN}"
    assert render_text(text, {"DICOMGW_LISTEN": "127.0.0.1:8080", "OTHER": "nope"}) == (
        "listen 127.0.0.1:8080; set $dgw_x $host; ${OTHER} $DICOMGW_LISTEN ${dicomgw_listen} 127.0.0.1:8080"
    )


def test_render_text_is_one_pass_and_literal() -> None:
    values = {"DICOMGW_A": "${DICOMGW_B} \\1 \\g<0>", "DICOMGW_B": "b"}
    assert render_text("x ${DICOMGW_A} y", values) == "x ${DICOMGW_B} \\1 \\g<0> y"


def test_render_text_names_every_missing_variable_once() -> None:
    with pytest.raises(KeyError) as caught:
        render_text("${DICOMGW_Z} ${DICOMGW_A} ${DICOMGW_Z} ${DICOMGW_SET}", {"DICOMGW_SET": "1"})
    assert caught.value.args == ("template variables not set: DICOMGW_A, DICOMGW_Z",)


def test_render_text_without_variables() -> None:
    assert render_text("events {}\n", {}) == "events {}\n"


# -- cors_regex ----------------------------------------------------------------------------------------------------


def test_cors_regex_empty_matches_nothing_a_browser_sends() -> None:
    assert cors_regex(()) == "^$"
    assert re.search(cors_regex(()), "https://evil.example") is None
    assert re.search(cors_regex(()), "null") is None


def test_cors_regex_escapes_and_anchors() -> None:
    regex = cors_regex(("https://portal.example.org", "http://localhost:3000", "https://a-b.example"))
    assert regex == r"^(https://portal\.example\.org|http://localhost:3000|https://a\-b\.example)$"
    assert re.search(regex, "https://portal.example.org")
    assert re.search(regex, "http://localhost:3000")
    for origin in (
        "https://portalXexample.org",
        "https://portal.example.org.evil.com",
        "https://evil.com/https://portal.example.org",
        "http://localhost:30001",
        "http://portal.example.org",
    ):
        assert re.search(regex, origin) is None, origin


# -- render --------------------------------------------------------------------------------------------------------


def stack_values(var: Path, **stack_options: Any) -> dict[str, str]:
    return Stack(var, port=free_port(), **stack_options).nginx_values()


def test_render_writes_every_template(tmp_path: Path) -> None:
    values = stack_values(tmp_path / "var")
    out = tmp_path / "conf"
    main = render(out, values)
    assert main == out / "nginx.conf"
    assert main.read_bytes() == (NGINX_DIR / "nginx.conf").read_bytes()
    templates = sorted(p.relative_to(NGINX_DIR / "templates") for p in (NGINX_DIR / "templates").rglob("*.template"))
    rendered = sorted(p.relative_to(out / "conf.d") for p in (out / "conf.d").rglob("*") if p.is_file())
    assert rendered == [t.with_suffix("") for t in templates]
    assert Path("snippets/dgw-auth.conf") in rendered
    for template in templates:
        text = (out / "conf.d" / template.with_suffix("")).read_text()
        assert text == render_text((NGINX_DIR / "templates" / template).read_text(), values)
        assert re.search(r"\$\{DICOMGW_[A-Z0-9_]+\}", text) is None
    assert f"listen {values['DICOMGW_LISTEN']} ;" in (out / "conf.d" / "dicomgw.conf").read_text()


def test_render_replaces_stale_files(tmp_path: Path) -> None:
    out = tmp_path / "conf"
    stale = out / "conf.d" / "old.conf"
    stale.parent.mkdir(parents=True)
    stale.write_text("server { listen 1; }")
    render(out, stack_values(tmp_path / "var"))
    assert not stale.exists()


def test_render_refuses_missing_values(tmp_path: Path) -> None:
    values = stack_values(tmp_path / "var")
    del values["DICOMGW_CACHE_DIR"]
    with pytest.raises(KeyError, match="DICOMGW_CACHE_DIR"):
        render(tmp_path / "conf", values)


def test_render_from_another_source(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "templates" / "deep").mkdir(parents=True)
    (source / "nginx.conf").write_text("main\n")
    (source / "templates" / "deep" / "x.conf.template").write_text("v ${DICOMGW_V} $uri;\n")
    (source / "templates" / "notes.txt").write_text("not a template")
    main = render(tmp_path / "out", {"DICOMGW_V": "1"}, source=source)
    assert main.read_text() == "main\n"
    assert (tmp_path / "out" / "conf.d" / "deep" / "x.conf").read_text() == "v 1 $uri;\n"
    assert sorted(p.name for p in (tmp_path / "out" / "conf.d").rglob("*") if p.is_file()) == ["x.conf"]


def _snapshot(paths: list[Path]) -> dict[str, tuple[int, float]]:
    """Name → (size, mtime) of everything under ``paths``: where NGINX would write if it escaped its prefix."""
    seen: dict[str, tuple[int, float]] = {}
    for root in paths:
        if root.is_file():
            seen[str(root)] = (root.stat().st_size, root.stat().st_mtime)
        elif root.is_dir():
            for path in root.rglob("*"):
                if path.is_file():
                    seen[str(path)] = (path.stat().st_size, path.stat().st_mtime)
    return seen


WATCHED = [
    Path("/var/log/nginx"),
    Path("/var/lib/nginx"),
    Path("/run/nginx.pid"),
    Path("/var/run/nginx.pid"),
    Path("/tmp/nginx"),
    NGINX_DIR,
]  # not the repository's var/: other processes (the local stack, benchmarks) write there


def nginx_test(tmp_path: Path, var: Path, values: dict[str, str]) -> subprocess.CompletedProcess[str]:
    prefix = var / "nginx"
    for sub in ("logs", "tmp", "cache"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    (var / "run").mkdir(parents=True, exist_ok=True)
    main = render(prefix / "conf", values)
    argv = [NGINX, "-t", "-p", f"{prefix}/", "-c", str(main), "-e", str(tmp_path / "nginx-test-error.log")]
    if os.geteuid() == 0:
        argv += ["-g", "user root;"]
    return subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=60)


def _assert_only_under(values: dict[str, str], root: Path) -> None:
    """Every filesystem path the template gets (other than the read-only viewer) lies under ``root``."""
    for name, value in values.items():
        found = re.fullmatch(r"(?:unix:)?(/\S+)", value)
        if found and name != "DICOMGW_VIEWER_ROOT":
            assert Path(found.group(1)).resolve().is_relative_to(root.resolve()), (name, value)


@pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed")
@pytest.mark.parametrize("variant", ["plain", "tls", "s3"])
def test_rendered_configuration_passes_nginx_t(tmp_path: Path, variant: str) -> None:
    var = tmp_path / "var"
    if variant == "tls":
        self_signed_certificate(var / "tls")
        values = stack_values(var, tls=True)
    elif variant == "s3":
        values = stack_values(
            var,
            storage_url="s3://bucket/prefix",
            extra_env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "DICOMGW_CORS_ORIGINS": "https://a.example"},
        )
        assert values["DICOMGW_STORAGE_UPSTREAM"] == "127.0.0.1:9"
        assert values["DICOMGW_STORAGE_SCHEME"] == "http"
    else:
        values = stack_values(var, extra_env={"DICOMGW_CORS_ORIGINS": "https://a.example, http://localhost:3000"})
        assert values["DICOMGW_CORS_ORIGIN_REGEX"] == r"^(https://a\.example|http://localhost:3000)$"
    _assert_only_under(values, tmp_path)
    before = _snapshot(WATCHED)
    result = nginx_test(tmp_path, var, values)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    assert _snapshot(WATCHED) == before
    # what -t created (log files, cache folders) is inside the prefix
    assert (var / "nginx" / "logs" / "access.log").exists()
    assert (var / "nginx" / "cache" / "auth").is_dir()


# -- the settings only NGINX reads, checked by `stack up`, the NGINX image and Terraform alike -------------------------

CHECK_SCRIPT = NGINX_DIR.parent / "docker" / "nginx-check-env.sh"
NOT_A_SOURCE = "is not a CSP source: write 'self', 'none', a scheme such as https:, or an origin such as https://portal.example.org"
# DICOMGW_FRAME_ANCESTORS as given -> as NGINX sends it
SERVED = {
    "'self'": "'self'",
    "'SELF' https://portal.example.org": "'SELF' https://portal.example.org",
    "'self'  https://*.example.org:8443/viewer/ https:": "'self' https://*.example.org:8443/viewer/ https:",
    "capacitor://localhost": "capacitor://localhost",
    "portal.example.org:*": "portal.example.org:*",
    "https://portal.example.org.": "https://portal.example.org.",  # a fully qualified name (CSP3's host-part)
    "'none'": "'none'",
}
# DICOMGW_FRAME_ANCESTORS as given -> the error after the variable's name
REFUSED = {
    "https://a.example,https://b.example": "'https://a.example,https://b.example': separate the sources with spaces, "
    "not commas, as CSP writes them",
    "self": "'self' is read as a host name: write 'self' with its single quotes",
    "'self' None": "'None' is read as a host name: write 'none' with its single quotes",
    "'none' https://portal.example.org": "'none' stands alone: with other sources a browser ignores it",
    'https://a.example" always; add_header X "1': f"'https://a.example\"' {NOT_A_SOURCE}",
    "https://a.example/$host": f"'https://a.example/$host' {NOT_A_SOURCE}",
    "'self';": f"''self';' {NOT_A_SOURCE}",
    "http://[::1]:8080": f"'http://[::1]:8080' {NOT_A_SOURCE}",
    "https://klinik-müller.example": f"'https://klinik-müller.example' {NOT_A_SOURCE}",
    "https://\u212aelvin.example": f"'https://\u212aelvin.example' {NOT_A_SOURCE}",  # KELVIN SIGN, k ignoring case
    "'self'\nhttps://portal.example.org": "write the sources on one line, separated by spaces",
    "'self'\rhttps://portal.example.org": "write the sources on one line, separated by spaces",
    "   ": "names no source: 'self' lets this site frame the viewer, 'none' no site",
}


def run_check_script(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The image's check as its entrypoint runs it (Debian's /bin/sh, dash, as in nginx:1.27-bookworm)."""
    return subprocess.run(
        ["/bin/sh", str(CHECK_SCRIPT)], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(("value", "served"), SERVED.items())
def test_frame_ancestors_in_csp_grammar_are_served_one_space_apart(value: str, served: str) -> None:
    assert frame_ancestors(value) == served
    checked = run_check_script({"DICOMGW_FRAME_ANCESTORS": value})  # the NGINX image passes them too
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")


@pytest.mark.parametrize(("value", "error"), REFUSED.items())
def test_frame_ancestors_a_browser_would_ignore_are_refused_alike_by_stack_up_and_the_nginx_image(
    value: str, error: str
) -> None:
    with pytest.raises(ValueError) as caught:
        frame_ancestors(value)
    assert str(caught.value) == error
    checked = run_check_script({"DICOMGW_FRAME_ANCESTORS": value})
    said = f"dicom-gateway: DICOMGW_FRAME_ANCESTORS: {error}\n"
    assert (checked.returncode, checked.stdout, checked.stderr) == (1, "", said)


@pytest.mark.parametrize(
    ("name", "value", "least"),
    [
        ("DICOMGW_MAX_UPLOADS", "0", 1),  # NGINX's max_conns=0 is no limit at all
        ("DICOMGW_MAX_UPLOADS", "four", 1),
        ("DICOMGW_MAX_UPLOADS", "1000000", 1),
        ("DICOMGW_MAX_UPLOADS", "", 1),
        ("DICOMGW_AUTH_CACHE_SECONDS", "-1", 0),
        ("DICOMGW_AUTH_CACHE_SECONDS", "2s", 0),
        ("DICOMGW_AUTH_CACHE_SECONDS", "+2", 0),  # Python's int() reads these two; NGINX does not
        ("DICOMGW_AUTH_CACHE_SECONDS", "1_0", 0),
    ],
)
def test_the_nginx_image_and_stack_up_refuse_a_count_nginx_would_misread(
    tmp_path: Path, name: str, value: str, least: int
) -> None:
    said = f"{name}: expected a whole number from {least} to 999999, got '{value}'"
    checked = run_check_script({name: value})
    assert (checked.returncode, checked.stderr) == (1, f"dicom-gateway: {said}\n")
    if value:  # empty is the default to `stack up`, as for every variable; the image has none to put there
        with pytest.raises(StackError) as caught:
            Stack(tmp_path / "var", extra_env={name: value}).nginx_values()
        assert str(caught.value) == said


@pytest.mark.parametrize("size", ["0", "0g", "4 g", "4gb", "1.5g", "1000000k", "-1", "", "4g\n0"])
def test_the_nginx_image_refuses_a_body_size_nginx_would_misread(size: str) -> None:
    """client_max_body_size 0 is no limit at all; the rest NGINX refuses with its own [emerg] line."""
    checked = run_check_script({"DICOMGW_MAX_BODY": size})
    if "\n" in size:  # grep passed it: one of its lines matched
        said = "dicom-gateway: DICOMGW_MAX_BODY: write the size on one line\n"
        assert (checked.returncode, checked.stderr) == (1, said)
        return
    assert (checked.returncode, checked.stderr) == (
        1,
        "dicom-gateway: DICOMGW_MAX_BODY: expected a size such as 4g (a whole number from 1 to 999999, then k, m, g or "
        f"nothing for bytes), got '{size}'\n",
    )
    assert run_check_script({"DICOMGW_MAX_BODY": "512M"}).returncode == 0


def test_the_nginx_image_takes_its_own_defaults() -> None:
    """The image's ENV (docker/nginx.Dockerfile) and the unset case both pass: a check that refused them would stop
    every container."""
    dockerfile = (NGINX_DIR.parent / "docker" / "nginx.Dockerfile").read_text()
    checked = r"(DICOMGW_(?:MAX_UPLOADS|MAX_BODY|AUTH_CACHE_SECONDS|FRAME_ANCESTORS|CORS_ORIGIN_REGEX))=(\S+)"
    defaults = dict(re.findall(checked, dockerfile))
    assert defaults == {
        "DICOMGW_MAX_UPLOADS": "4",
        "DICOMGW_MAX_BODY": "4g",
        "DICOMGW_AUTH_CACHE_SECONDS": "2",
        "DICOMGW_CORS_ORIGIN_REGEX": '"^\\$"',
        "DICOMGW_FRAME_ANCESTORS": "\"'self'\"",
    }
    defaults["DICOMGW_CORS_ORIGIN_REGEX"] = "^$"
    defaults["DICOMGW_FRAME_ANCESTORS"] = "'self'"  # the Dockerfile's quotes are ENV syntax
    assert run_check_script(defaults).returncode == 0
    assert run_check_script({}).returncode == 0
    assert os.access(CHECK_SCRIPT, os.X_OK)  # the official entrypoint runs only executable *.sh files


CORS_REFUSED = [
    "",  # matches every origin
    r"^https://portal\.example\.org",  # also https://portal.example.org.evil.example
    r"^https://portal.example.org$",  # a dot is any character: https://portalxexample.org
    ".*",
    r"^https://.*\.example\.org$",
    r"^(https://portal\.example\.org$",
    r"^(https://a\.example)|(https://b\.example)$",  # the anchors bind to one alternative each
    r"^https://Portal\.example\.org$",  # browsers send the host in lower case: never matches
    r'^https://portal\.example\.org$" x; "',
    r"^https://portal\\.example\.org$",
    "^https://portal\\.example\\.org$\n|.*",  # grep passed it: one of its lines matched
]


@pytest.mark.parametrize(
    "regex",
    [
        cors_regex(()),
        cors_regex(("https://portal.example.org",)),
        cors_regex(("https://portal.example.org:8443", "capacitor://localhost", "my-app+web://localhost")),
        cors_regex(("https://xn--klinik-mller-klb.example", "http://127.0.0.1:3000", "https://my_host.example")),
        r"^https://portal\.example\.org$",  # the form .env.example shows
    ],
)
def test_the_nginx_image_takes_a_cors_regex_of_exact_origins(regex: str) -> None:
    checked = run_check_script({"DICOMGW_CORS_ORIGIN_REGEX": regex})
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")


@pytest.mark.parametrize("regex", CORS_REFUSED)
def test_the_nginx_image_refuses_a_cors_regex_that_matches_more_than_exact_origins(regex: str) -> None:
    """NGINX echoes an Origin the regex matches, with credentials: compose takes it from a hand-edited .env."""
    checked = run_check_script({"DICOMGW_CORS_ORIGIN_REGEX": regex})
    assert (checked.returncode, checked.stdout) == (1, "")
    if "\n" in regex:
        assert checked.stderr == "dicom-gateway: DICOMGW_CORS_ORIGIN_REGEX: write the regex on one line\n"
        return
    assert checked.stderr == (
        "dicom-gateway: DICOMGW_CORS_ORIGIN_REGEX: must match exact origins only, as stack up and Terraform write it "
        "from DICOMGW_CORS_ORIGINS: '^(https://portal\\.example\\.org|capacitor://localhost)$' for two, '^$' for none "
        f"(anchored, in lower case, every dot escaped); got '{regex}'\n"
    )
