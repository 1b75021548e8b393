"""gateway.nginx_contract: every internal location and ``X-Dgw-*`` header Python relies on is in the rendered
template, used the way Python expects, and the template exchanges no ``X-Dgw-*`` header Python does not declare."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway import nginx_contract as nginx
from gateway.tools.nginxconf import render
from gateway.tools.stack import Stack, free_port


@pytest.fixture(scope="module")
def conf(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The whole rendered configuration (main server and snippets) as one text, comments removed."""
    tmp = tmp_path_factory.mktemp("contract")
    render(tmp / "conf", Stack(tmp / "var", port=free_port()).nginx_values())
    texts = [path.read_text() for path in sorted((tmp / "conf" / "conf.d").rglob("*.conf"))]
    return "\n".join(re.sub(r"(?m)^\s*#.*$", "", text) for text in texts)


def test_internal_locations(conf: str) -> None:
    openings = [
        f"location = {nginx.AUTH} {{",
        f"location {nginx.PLAN}/ {{",
        f'location ~ "^{nginx.FRAME}(?:/t/[^/]+)?(?<dgw_frame_block>',
        f"location {nginx.ABORT}/ {{",
        f"location ~ ^{nginx.SEGMENT}/(?<dgw_seg_start>[0-9]+)-(?<dgw_seg_end>[0-9]+)(?<dgw_seg_path>/.*)$ {{",
        f"location ~ ^{nginx.WHOLE_SEGMENT}(?<dgw_seg_path>/.*)$ {{",
        f"location {nginx.FILE}/ {{",
        f"location ~ ^{nginx.OBJECT}(?<dgw_obj_path>/.*)$ {{",
        f"location = {nginx.ERROR_PAGE} {{",
    ]
    for opening in openings:
        assert opening in conf, opening
        start = conf.index(opening)
        body = conf.index(" {\n", start)  # after the opening (a regex may hold braces)
        assert "internal;" in conf[body : conf.index("}", body)], opening  # no client reaches it
    assert f"auth_request {nginx.AUTH};" in conf


def test_headers_to_python(conf: str) -> None:
    # the only way into the plan locations: one frame to /_frame/ (from its block's plan), anything else to /_plan/
    assert "rewrite ^ $dgw_plan_location$uri last;" in conf
    choice = conf[conf.index("$dgw_plan_location {") : conf.index("\n}", conf.index("$dgw_plan_location {"))]
    assert f"default {nginx.PLAN};" in choice
    assert re.findall(r" (/_[a-z]+);", choice) == [nginx.PLAN, nginx.FRAME]
    assert f"proxy_set_header {nginx.RANGE} $dgw_plan_range;" in conf  # blank when If-Range is sent
    for header in nginx.TO_PYTHON:  # a client cannot send them: every other proxied request clears them
        assert f'proxy_set_header {header} "";' in conf


# the njs modules the configuration imports, which read some of Python's headers themselves (r.variables.upstream_...)
NJS = "".join(p.read_text() for p in sorted((Path(__file__).resolve().parents[2] / "nginx/templates/njs").iterdir()))


def test_headers_from_python(conf: str) -> None:
    for header in nginx.FROM_PYTHON:
        variable = nginx.upstream_variable(header)
        assert variable in conf or f"r.variables.{variable[1:]}" in NJS, header
    assert f"proxy_hide_header {nginx.ACCEPT_RANGES};" in conf


def test_no_undeclared_dgw_header(conf: str) -> None:
    declared = {h.lower() for h in (*nginx.TO_PYTHON, *nginx.FROM_PYTHON)}
    named = {h.lower() for h in re.findall(r"\b(X-Dgw-[A-Za-z-]+)", conf + NJS)}
    named |= {"x-dgw-" + v.replace("_", "-") for v in re.findall(r"upstream_http_x_dgw_([a-z_]+)", conf + NJS)}
    assert named - declared == set()


def test_helpers() -> None:
    assert nginx.environ_key(nginx.RANGE) == "HTTP_X_DGW_RANGE"
    assert nginx.upstream_variable(nginx.SUB) == "$upstream_http_x_dgw_sub"


def test_template_says_why_headers_repeat() -> None:
    snippet = Path(__file__).resolve().parents[2] / "nginx/templates/snippets/dgw-headers.conf.template"
    assert "inherits add_header" in snippet.read_text()


def test_block_plans_are_pythons(conf: str) -> None:
    """A frame's block and its place in it are the digits of its number (FRAMES_PER_BLOCK: the last two), its range
    comes from the block plan's table, which the client never sees."""
    assert nginx.FRAMES_PER_BLOCK == 100
    assert "(?<dgw_frame_block>/dicomweb/studies/[0-9.]+/series/[0-9.]+/instances/[0-9.]+/frames/[1-9][0-9]*)" in conf
    assert "(?<dgw_frame_index>[0-9]{2})$" in conf
    assert f"proxy_pass http://dgw_gateway{nginx.BLOCK}$dgw_frame_block;" in conf
    assert f'"$dgw_frame_index|{nginx.upstream_variable(nginx.FRAME_RANGES)}" $dgw_frame_segment' in conf
    assert f"default {nginx.ABORT};" in conf  # a place the table does not list
    assert f"proxy_hide_header {nginx.FRAME_RANGES};" in conf


@pytest.mark.parametrize(
    ("content_type", "part_type"),
    [
        ("text/plain", "text/plain"),
        ("multipart/form-data", "multipart/form-data"),
        ("application/dicom+json", "application/dicom+json"),
        ("application/json", "application/json"),
        ("application/dicom+xml", "application/dicom+xml"),
        ('multipart/related; type="application/dicom+json"; boundary=x', "application/dicom+json"),
        ("multipart/related; boundary=x; type=application/json", "application/json"),
        ('multipart/related;type="application/dicom+xml"', "application/dicom+xml"),
        ('multipart/related; type="image/jpeg"; boundary=x', "image/jpeg"),
    ],
)
def test_nginx_refuses_a_stow_body_type_in_pythons_words(conf: str, content_type: str, part_type: str) -> None:
    """NGINX answers a STOW of a media type STOW never takes, or of a multipart type= naming parts it never takes,
    from the request's head (dicomgw.conf, $dgw_stow_type_refusal); Python says the same of a body or part of that
    type. The two texts are one detail."""
    from gateway.views.dicomweb import _stow_refusal

    block = conf[conf.index("map $content_type $dgw_stow_type_refusal {") :]
    entries = re.findall(r'(default|"~\*([^"\\]*(?:\\.[^"\\]*)*)")\s+\'([^\']*)\';', block[: block.index("\n}")])
    detail = next(
        text
        for key, regex, text in entries[1:] + entries[:1]
        if key == "default" or re.match(regex.replace('\\"', '"'), content_type, re.I)
    )
    assert detail.replace('\\\\\\"', '"') == _stow_refusal(part_type)


@pytest.mark.parametrize(
    ("coding", "named"),
    [
        ("gzip", "gzip"),
        ("GZIP", "GZIP"),
        ("gzip, br", "gzip, br"),
        ('x"y', "of this request"),
        ("a" * 41, "of this request"),
    ],
)
def test_nginx_refuses_a_compressed_stow_in_pythons_words(conf: str, coding: str, named: str) -> None:
    """A compressed STOW body is NGINX's 415 from the request's head ($dgw_stow_coding); Python's text is the same,
    the coding named only when no quote or backslash could reach the JSON."""
    from gateway.views.dicomweb import _coding_refusal

    block = conf[conf.index("map $http_content_encoding $dgw_stow_coding {") :]
    [regex] = re.findall(r'"~\^(.*)" \$dgw_coding_sent;', block[: block.index("\n}")])
    match = re.match("^" + regex.replace("?<dgw_coding_sent>", "?P<c>").replace("\\t", "\t"), coding)
    assert (match.group("c") if match else "of this request") == named
    assert _coding_refusal(coding) == f"Content-Encoding {named} is not supported: send the body uncompressed"
    assert "'Content-Encoding $dgw_stow_coding is not supported: send the body uncompressed'" in conf


def _map_entries(conf: str, opening: str) -> list[tuple[str, str]]:
    """The (regex, value) entries of one map of the rendered configuration, in order (``default`` as regex None)."""
    block = conf[conf.index(opening) + len(opening) : ]
    block = block[: block.index("\n}")]
    quoted = r'"(?:[^"\\]|\\.)*"'
    entries = re.findall(rf"^\s*({quoted}|\S+)\s+({quoted}|'[^']*'|\S+);", block, re.M)
    return [(key, value) for key, value in entries]


def _nginx_map(conf: str, opening: str, value: str) -> str:
    """What a map of regexes (``~`` or ``~*``) gives ``value``: the first entry that matches, else its default."""
    default = ""
    for key, result in _map_entries(conf, opening):
        if key == "default":
            default = result
            continue
        if not key.startswith('"~'):
            continue
        pattern = key[1:-1].replace('\\"', '"')
        flags = re.I if pattern.startswith("~*") else 0
        if re.search(pattern[2:] if flags else pattern[1:], value, flags):
            return result
    return default


STOW_ACCEPTS = [
    # refused from the head: no media range STOW can answer in
    ("application/dicom", True),
    ("image/png", True),
    ("text/plain, image/jpeg;q=0.5", True),
    ("image/png;q=0", True),
    ("multipart/related", True),
    ("multipart/related; type=application/dicom", True),
    ("application/octet-stream,text/html", True),
    (" / ", True),
    # left to Python: it may answer these (or weigh q=0 itself)
    ("", False),
    ("*/*", False),
    ("application/*", False),
    ("multipart/*", False),
    ("application/dicom+json", False),
    ("Application/DICOM+JSON", False),
    ("application/json", False),
    ("application/dicom+xml", False),
    ('multipart/related; type="application/dicom+xml"', False),
    ("multipart/related; type=application/dicom+xml", False),
    ("application/dicom json", False),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),
    ("application/dicom+json;q=0", False),
    ("foo", False),
    ("foo;type=a/b", False),
    ('foo;x="a,b/c"', False),
    ("image/png, application/dicom+json", False),
]


@pytest.mark.parametrize(("accept", "refused"), STOW_ACCEPTS)
def test_nginx_refuses_a_stow_accept_only_where_python_does(conf: str, accept: str, refused: bool) -> None:
    """A STOW whose Accept takes no answer STOW gives is NGINX's 406 from the request's head
    ($dgw_stow_accept_header_refused): only where Python's negotiation refuses it too, never one Python answers."""
    from gateway.dicomweb.accept import negotiate
    from gateway.errors import NotAcceptable
    from gateway.views.dicomweb import STOW_OFFERS

    nginx_refuses = _nginx_map(conf, "map $dgw_request_accept $dgw_stow_accept_header_refused {", accept) == "1"
    assert nginx_refuses == refused
    try:
        negotiate(accept, STOW_OFFERS)
    except NotAcceptable:
        python_refuses = True
    else:
        python_refuses = False
    assert python_refuses or not nginx_refuses


@pytest.mark.parametrize(
    ("query", "checked"),
    [("", True), ("?token=abc", True), ("?accept=application/dicom%2Bjson", False), ("?token=a&ACCEPT=x", False),
     ("?%61ccept=x", False), ("?accepted=1", True)],
)
def test_nginx_leaves_a_stow_with_an_accept_parameter_to_python(conf: str, query: str, checked: bool) -> None:
    """Python reads the ``accept`` query parameter before the header: NGINX judges the header only when the query
    cannot hold one (``?%61ccept=`` is one to Python)."""
    opening = "map $request_uri $dgw_stow_accept_refused {"
    value = _nginx_map(conf, opening, f"/dicomweb/studies{query}")
    assert (value == "$dgw_stow_accept_header_refused") == checked


@pytest.mark.parametrize(
    ("content_type", "refused"),
    [
        ("multipart/related", True),
        ('multipart/related; type="application/dicom"', True),
        ("Multipart/Related;type=application/dicom", True),
        ('multipart/related; boundary=""; type=application/dicom', True),
        ("multipart/related; boundary=x", False),
        ('multipart/related; type="application/dicom"; BOUNDARY="a b"', False),
        ('multipart/related; boundary=""; boundary=x', False),
        ('multipart/related; boundary=""x', False),
        ("multipart/related; boundary=", False),
        ("application/dicom", False),
    ],
)
def test_nginx_refuses_a_stow_without_a_boundary_in_pythons_words(conf: str, content_type: str, refused: bool) -> None:
    """A multipart STOW without a boundary parameter is NGINX's 400 from the request's head
    ($dgw_stow_boundary_refused), in Python's words; any boundary Python could read is Python's to judge."""
    from gateway.dicomweb.multipart import check_boundary, parse_content_type
    from gateway.errors import GatewayError, MalformedMultipart

    nginx_refuses = _nginx_map(conf, "map $content_type $dgw_stow_boundary_refused {", content_type) == "1"
    assert nginx_refuses == refused
    if refused:
        _, params = parse_content_type(content_type)
        with pytest.raises(MalformedMultipart) as python:
            check_boundary(params.get("boundary", ""))
        entries = dict(_map_entries(conf, "map $dgw_stow_status $dgw_error_detail {"))
        assert entries["400"].strip('"') == python.value.detail
    else:
        try:
            media_type, params = parse_content_type(content_type)
            if media_type == "multipart/related":
                check_boundary(params.get("boundary", ""))
        except GatewayError as error:
            assert error.detail != "multipart body without a boundary parameter"


def test_nginx_says_pythons_words_for_a_stow_path_and_accept_it_refuses(conf: str) -> None:
    """The 404 of a STOW to a path ending in "/" and the 406 of a STOW whose Accept takes no answer, answered by NGINX
    from the request's head, say what Python says of them."""
    from gateway.dicomweb.paths import unknown_resource_detail
    from gateway.views.dicomweb import STOW_OFFERS, not_acceptable_detail

    entries = dict(_map_entries(conf, "map $dgw_stow_status $dgw_error_detail {"))
    assert entries["404"].strip('"') == unknown_resource_detail("/dicomweb/studies/")
    assert entries["406"].strip("'").replace('\\\\\\"', '"') == not_acceptable_detail(STOW_OFFERS)
    for path, refused in (
        ("/dicomweb/studies/", "1"),
        ("/t/abc/dicomweb/studies/1.2.3/", "1"),
        ("/dicomweb/studies", "0"),
        ("/dicomweb/studies/1.2.3", "0"),
    ):
        assert _nginx_map(conf, "map $dgw_raw_path $dgw_stow_path_refused {", path) == refused
