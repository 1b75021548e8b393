"""The contract between NGINX (nginx/templates/) and Python, named once: internal locations and ``X-Dgw-*`` headers.

Python code uses these names instead of string literals; tests/unit/test_nginx_contract.py renders the template and
checks each one is there (and that the template uses no ``X-Dgw-*`` header this module does not declare).
"""

from __future__ import annotations

# Internal locations (``internal;`` in the template: reachable from NGINX itself, never from a client).
AUTH = "/_auth"  # the auth_request subrequest, answered by the WSGI fast path
SEGMENT = "/_seg"  # SSI include of a byte range: /_seg/{first}-{last}{origin path}
# SSI include of a byte range of a local-folder object, read from disk by njs (njs/dgw_segments.js) without the
# origin server's hop: /_fseg/{first}-{last}{origin path}; only for ranges up to FILE_SEGMENT_MAX bytes (njs holds
# the range in memory; larger ranges stream through /_seg).
FILE_SEGMENT = "/_fseg"
FILE_SEGMENT_MAX = 1 << 20
WHOLE_SEGMENT = "/_seg/all"  # SSI include of a whole stored object (proxied from storage)
FILE = "/_file"  # SSI include of a whole object of local-folder storage (read from disk by NGINX)
OBJECT = "/_obj"  # X-Accel-Redirect target: a whole stored object, Range answered by storage
# X-Accel-Redirect target of frames and bulkdata of big-endian and deflated instances: /_conv{token-less path}, proxied
# to Python's fast path, which answers with the converted (little-endian) bytes; no SSI, no cache.
CONVERTED = "/_conv"
ERROR_PAGE = "/_dgw/error"  # NGINX's own JSON error page (no Python involved; named so the test finds it)
PLAN = "/_plan"  # read plans: the byte-serving location rewrites to /_plan{original path}, proxied to Python
# One frame (GET, no Range, no query but the token) past the first block: the byte-serving location rewrites to
# /_frame{original path}, whose plan is its block's (below), cached once for all of the block's frames.
FRAME = "/_frame"
# Block plans: /_block3{token-less instance path}/frames/{block}, proxied to Python, cached; block b holds frames
# b * FRAMES_PER_BLOCK to b * FRAMES_PER_BLOCK + FRAMES_PER_BLOCK - 1, so NGINX finds a frame's block and its place
# in it from the digits of its number. The path names the block format (3: a table of ranges in a header, which a
# map picks the frame's from for the SSI include): NGINX's cache outlives an upgrade, and a block of another format
# would give wrong bytes. Change it with every change of the block format.
BLOCK = "/_block3"
FRAMES_PER_BLOCK = 100  # the last two digits of a frame's number are its place in its block (the /_frame location)
# Where a block plan's include goes for a place its table does not list (never: a block lists all of its frames or is
# not made): the transfer is aborted.
ABORT = "/_dgw/abort"

# NGINX -> Python (set only by the byte-serving locations; cleared on every other proxied request).
RANGE = "X-Dgw-Range"  # the client's Range, blank with If-Range (NGINX blanks Range itself towards a cached upstream)
AUTH_CACHE = "X-Dgw-Auth-Cache"  # (/_auth only) how many seconds NGINX keeps a decision: DICOMGW_AUTH_CACHE_SECONDS

# Python -> NGINX (read by auth_request_set / $upstream_http_*; hidden from the client or turned into headers).
SUB = "X-Dgw-Sub"  # the decision's subject, for the audit log
JTI = "X-Dgw-Jti"  # the token id, for the audit log
STUDY = "X-Dgw-Study"  # the study the request names, for the audit log
VIA = "X-Dgw-Via"  # which transports carried the deciding credentials (path, query, bearer, api-key, cookie)
ERROR = "X-Dgw-Error"  # why auth refused: the error code NGINX writes into its JSON body
ERROR_DETAIL = "X-Dgw-Error-Detail"  # and the detail, JSON-escaped: the body of Python's own answer to the same error
# "400" when the refusal is a client's mistake in the request itself (a path or WADO-URI query the auth step cannot
# read), which NGINX then answers as the 400 Python answers it with, not as a refusal of the credential (403)
ERROR_STATUS = "X-Dgw-Error-Status"
ACCEPT_RANGES = "X-Dgw-Accept-Ranges"  # SSI drops Accept-Ranges; a plan that honours Range says so here
FRAME_RANGES = "X-Dgw-Frame-Ranges"  # a block plan's table of its frames' byte ranges, read by a map (never sent)
# and the bytes a block's frame body holds around its range (a multipart part's head and tail; 0 for a single part):
# with the range, the frame's body length, which njs makes HTTP/1.0's Content-Length (as LENGTH is a plan's)
FRAME_AROUND = "X-Dgw-Frame-Around"
GENERATION = "X-Dgw-Generation"  # the study's deletion generation: part of the plan-cache key (gateway.lifecycle)
# a whole object's redirect (/_obj): its size in bytes, named in the Content-Range of a 416 storage sends without one
SIZE = "X-Dgw-Size"
# a whole object's redirect (/_obj): the stored ETag, when a tag of the client's If-None-Match matches it weakly (RFC
# 9110 13.1.2), sent to storage as If-None-Match in place of the client's (S3 compares W/ tags and lists strongly)
IF_NONE_MATCH = "X-Dgw-If-None-Match"

TO_PYTHON = (RANGE, AUTH_CACHE)
# a read plan's: the length of the body SSI makes of it, when every include names its byte range (SSI drops any
# Content-Length): sent to an HTTP/1.0 client, which has no other way to tell a cut body from a whole one
LENGTH = "X-Dgw-Length"
FROM_PYTHON = (
    SUB,
    JTI,
    STUDY,
    VIA,
    ERROR,
    ERROR_DETAIL,
    ERROR_STATUS,
    ACCEPT_RANGES,
    GENERATION,
    FRAME_RANGES,
    FRAME_AROUND,
    SIZE,
    IF_NONE_MATCH,
    LENGTH,
)
LOCATIONS = (AUTH, PLAN, FRAME, BLOCK, ABORT, SEGMENT, WHOLE_SEGMENT, FILE, OBJECT, CONVERTED, ERROR_PAGE)


def environ_key(header: str) -> str:
    """The WSGI environ key of a request header (``X-Dgw-Range`` -> ``HTTP_X_DGW_RANGE``)."""
    return "HTTP_" + header.upper().replace("-", "_")


def upstream_variable(header: str) -> str:
    """NGINX's variable for a header of the upstream's answer (``X-Dgw-Sub`` -> ``$upstream_http_x_dgw_sub``)."""
    return "$upstream_http_" + header.lower().replace("-", "_")
