#!/bin/sh
# Write .env for docker compose from .env.example, filling every empty secret with a fresh random value
# (64 hex characters from /dev/urandom). Refuses to overwrite an existing file: keys in use must be rotated on
# purpose (docs/deploy.md), never by re-running a set-up script. Usage: sh docker/make-env.sh [EXAMPLE] [OUT]
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
example=${1:-$here/.env.example}
out=${2:-$here/.env}

if [ -e "$out" ]; then
    echo "make-env: $out exists; not overwriting it (delete it first to start over)" >&2
    exit 1
fi

random_hex() {
    od -An -N32 -tx1 /dev/urandom | tr -d ' \n'
}

umask 077
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
while IFS= read -r line || [ -n "$line" ]; do
    case $line in
        DICOMGW_SIGNING_KEYS= | DICOMGW_API_KEYS= | MINIO_ROOT_PASSWORD= | DICOMGW_S3_SECRET_ACCESS_KEY= | POSTGRES_PASSWORD=)
            printf '%s%s\n' "$line" "$(random_hex)" ;;
        *)
            printf '%s\n' "$line" ;;
    esac
done <"$example" >"$tmp"
mv "$tmp" "$out"
trap - EXIT
echo "make-env: wrote $out (mode 0600); now: docker compose up --build"
