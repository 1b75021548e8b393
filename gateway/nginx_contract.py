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
# One frame (GET, no Range, no query but the token): the byte-serving location rewrites to /_frame{original path};
# a plan-cache miss there is made by njs (njs/dgw_frames.js, on the origin server) from the frame's block plan, and
# what njs does not answer goes to Python's per-frame plan.
FRAME = "/_frame"
# Block plans: /_block2{token-less instance path}/frames/{first}, proxied to Python, cached. The path names the block
# format (2: a shared line 0 and compact frame lines): NGINX's cache outlives an upgrade, and a block of another
# format read by this njs would give frame n the bytes of frame n+1. An NGINX and a gateway of different versions
# find no block (404) and fall back to per-frame plans. Change it with every change of the block format.
BLOCK = "/_block2"
FRAMES_PER_BLOCK = 128  # frames per block plan; njs/dgw_frames.js holds the same number (a unit test compares)
BLOCK_OFFSET_DIGITS = 8  # width of a block plan's line offsets; njs/dgw_frames.js holds it too (a unit test compares)

# NGINX -> Python (set only by the byte-serving locations; cleared on every other proxied request).
RANGE = "X-Dgw-Range"  # the client's Range, blank with If-Range (NGINX blanks Range itself towards a cached upstream)
AUTH_CACHE = "X-Dgw-Auth-Cache"  # (/_auth only) how many seconds NGINX keeps a decision: DICOMGW_AUTH_CACHE_SECONDS

# Python -> NGINX (read by auth_request_set / $upstream_http_*; hidden from the client or turned into headers).
SUB = "X-Dgw-Sub"  # the decision's subject, for the audit log
JTI = "X-Dgw-Jti"  # the token id, for the audit log
STUDY = "X-Dgw-Study"  # the study the request names, for the audit log
VIA = "X-Dgw-Via"  # which transports carried the deciding credentials (path, query, bearer, api-key, cookie)
ERROR = "X-Dgw-Error"  # why auth refused: the error code NGINX writes into its JSON body
ACCEPT_RANGES = "X-Dgw-Accept-Ranges"  # SSI drops Accept-Ranges; a plan that honours Range says so here
GENERATION = "X-Dgw-Generation"  # the study's deletion generation: part of the plan-cache key (gateway.lifecycle)
BLOCK_CACHE = "X-Dgw-Block"  # (from njs) whether the block plan a frame's plan was made from was cached, for the log
# (from njs) that NGINX's cache folder has no room (nginx/templates/njs/dgw_cache.js): the frame's plan is served,
# not cached
CACHE_FULL = "X-Dgw-Cache-Full"

TO_PYTHON = (RANGE, AUTH_CACHE)
FROM_PYTHON = (SUB, JTI, STUDY, VIA, ERROR, ACCEPT_RANGES, GENERATION, BLOCK_CACHE, CACHE_FULL)
LOCATIONS = (AUTH, PLAN, FRAME, BLOCK, SEGMENT, WHOLE_SEGMENT, FILE, OBJECT, CONVERTED, ERROR_PAGE)


def environ_key(header: str) -> str:
    """The WSGI environ key of a request header (``X-Dgw-Range`` -> ``HTTP_X_DGW_RANGE``)."""
    return "HTTP_" + header.upper().replace("-", "_")


def upstream_variable(header: str) -> str:
    """NGINX's variable for a header of the upstream's answer (``X-Dgw-Sub`` -> ``$upstream_http_x_dgw_sub``)."""
    return "$upstream_http_" + header.lower().replace("-", "_")
