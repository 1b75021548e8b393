#!/bin/sh
# The NGINX image's first start-up step (/docker-entrypoint.d/15-dicomgw-check-env.sh): the settings only NGINX reads,
# checked before the official image's envsubst step (20-envsubst-on-templates.sh) writes them into the configuration,
# by the rules `dicom-gateway stack up` applies (gateway/tools/nginxconf.py frame_ancestors, gateway/tools/stack.py).
# A failing step stops the container with this one line: NGINX took DICOMGW_MAX_UPLOADS=0 (and DICOMGW_MAX_BODY=0)
# as no limit at all, and
# wrote whatever DICOMGW_FRAME_ANCESTORS held into the viewer's CSP header (a list separated by commas, which
# browsers ignore, so no portal could frame the viewer; a `"`, which ended the header and began a directive).
set -eu

fail() {
    printf 'dicom-gateway: %s\n' "$1" >&2  # not echo: dash's echo reads backslashes as escapes
    exit 1
}

# grep tests each line of its input: a value holding a line break passed when any one line matched (a CORS regex
# '^https://a\.example$', a line break, then '|.*' made NGINX echo every origin), so every pattern-checked value is
# one line first
cr=$(printf '\r')
one_line() {  # name, value, what to write[, how]
    case "$2" in
        *"
"* | *"$cr"*) fail "$1: write $3 on one line${4:+, $4}" ;;
    esac
}

whole_number() {  # name, value, least: at most 999999
    case "$2" in
        '' | *[!0-9]*) fail "$1: expected a whole number from $3 to 999999, got '$2'" ;;
    esac
    [ "${#2}" -le 6 ] && [ "$2" -ge "$3" ] || fail "$1: expected a whole number from $3 to 999999, got '$2'"
}

whole_number DICOMGW_MAX_UPLOADS "${DICOMGW_MAX_UPLOADS-4}" 1
whole_number DICOMGW_AUTH_CACHE_SECONDS "${DICOMGW_AUTH_CACHE_SECONDS-2}" 0
# client_max_body_size, where 0 is no limit either
one_line DICOMGW_MAX_BODY "${DICOMGW_MAX_BODY-4g}" "the size"
printf '%s\n' "${DICOMGW_MAX_BODY-4g}" | grep -Eq '^[1-9][0-9]{0,5}[kKmMgG]?$' ||
    fail "DICOMGW_MAX_BODY: expected a size such as 4g (a whole number from 1 to 999999, then k, m, g or nothing for bytes), got '${DICOMGW_MAX_BODY-}'"

# CSP Level 3's ancestor-source: 'self', 'none' (alone), a scheme-source (https:) or a host-source
# ([scheme://]host[:port][/path]); the path without " $ ' , ; which mean something to NGINX or to CSP
ancestors=${DICOMGW_FRAME_ANCESTORS-"'self'"}
case "$ancestors" in
    *"	"*) fail "DICOMGW_FRAME_ANCESTORS: write the sources on one line, separated by spaces" ;;
esac
one_line DICOMGW_FRAME_ANCESTORS "$ancestors" "the sources" "separated by spaces"
host_source='^([a-z][a-z0-9+.-]*:|([a-z][a-z0-9+.-]*://)?(\*|(\*\.)?[a-z0-9-]+(\.[a-z0-9-]+)*\.?)(:([0-9]+|\*))?(/[a-z0-9._~!&()*+=:@%/-]*)?)$'
count=0
none=0
set -f  # a source such as https://*.example.org is not a file name pattern
for source in $ancestors; do
    count=$((count + 1))
    case "$source" in
        *,*) fail "DICOMGW_FRAME_ANCESTORS: '$source': separate the sources with spaces, not commas, as CSP writes them" ;;
    esac
    lower=$(printf '%s' "$source" | tr 'A-Z' 'a-z')
    case "$lower" in
        self | none) fail "DICOMGW_FRAME_ANCESTORS: '$source' is read as a host name: write '$lower' with its single quotes" ;;
        "'self'") continue ;;
        "'none'") none=1 && continue ;;
    esac
    printf '%s\n' "$lower" | grep -Eq "$host_source" || fail "DICOMGW_FRAME_ANCESTORS: '$source' is not a CSP source: write 'self', 'none', a scheme such as https:, or an origin such as https://portal.example.org"
done
[ "$count" -gt 0 ] || fail "DICOMGW_FRAME_ANCESTORS: names no source: 'self' lets this site frame the viewer, 'none' no site"
[ "$none" -eq 0 ] || [ "$count" -eq 1 ] || fail "DICOMGW_FRAME_ANCESTORS: 'none' stands alone: with other sources a browser ignores it"

# DICOMGW_CORS_ORIGIN_REGEX: NGINX echoes an Origin this matches, with credentials (the cookie mode), so it may match
# exact origins only. `stack up` and Terraform write it from the origins; compose takes it from a hand-edited .env,
# where '^https://portal.example.org' also matched https://portal.example.org.evil.example (and any character for
# each dot), and an empty regex matched every origin. Checked: anchored by ^ and $ (around one group, if any),
# origins in lower case, every dot and plus escaped, no wildcard.
cors=${DICOMGW_CORS_ORIGIN_REGEX-'^$'}
one_line DICOMGW_CORS_ORIGIN_REGEX "$cors" "the regex"
if [ "$cors" != '^$' ]; then
    origin='[a-z][a-z0-9.+\-]*://[a-z0-9._\-]+(:[0-9]+)?'
    unescaped=$(printf '%s' "$cors" | sed -e 's/\\[.+-]//g' | tr -dc '.+\\')
    if ! printf '%s\n' "$cors" | grep -Eq "^\^($origin(\|$origin)*|\($origin(\|$origin)*\))\\$\$" || [ -n "$unescaped" ]; then
        fail "DICOMGW_CORS_ORIGIN_REGEX: must match exact origins only, as stack up and Terraform write it from DICOMGW_CORS_ORIGINS: '^(https://portal\\.example\\.org|capacitor://localhost)\$' for two, '^\$' for none (anchored, in lower case, every dot escaped); got '$cors'"
    fi
fi
