#!/bin/sh
# Build the upload-hook Lambda package from this repository: the gateway package and its runtime dependencies
# (Linux x86_64 wheels for CPython 3.11, the Lambda runtime in lambda.tf), zipped reproducibly (sorted entries,
# fixed timestamps) so the same commit gives the same SHA-256 and Terraform only redeploys on a real change.
#
#   terraform/scripts/build-lambda.sh [OUT.zip]      (default: build/lambda.zip at the repository root)
#
# Needs python3 with pip and network access to PyPI. boto3/botocore/s3transfer/jmespath are left out: the Lambda
# runtime ships them, and without them the zip stays under Lambda's 50 MB direct-upload limit.
set -eu

repo=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$repo/build/lambda.zip}
case $out in /*) ;; *) out=$(pwd)/$out ;; esac
python=${PYTHON:-python3}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Our own wheel first (pip will not build a local project under --only-binary), from a copy of the sources so
# setuptools leaves no build/ or *.egg-info in the working tree; then everything else from wheels for the Lambda
# platform, never for the build machine's.
mkdir "$work/src"
cp "$repo/pyproject.toml" "$work/src/"
if [ -f "$repo/README.md" ]; then cp "$repo/README.md" "$work/src/"; fi
cp -R "$repo/gateway" "$work/src/gateway"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$work/wheels" "$work/src"
"$python" -m pip install --quiet --no-compile --disable-pip-version-check \
    --target "$work/package" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --implementation cp --python-version 3.11 --only-binary=:all: \
    "$(ls "$work"/wheels/*.whl)[postgres]"
for provided in boto3 botocore s3transfer jmespath; do
    rm -rf "$work/package/$provided" "$work/package/$provided"-*.dist-info
done
rm -rf "$work/package/bin"

mkdir -p "$(dirname "$out")"
"$python" - "$work/package" "$out" <<'PY'
import os
import sys
import zipfile

root, out = sys.argv[1], sys.argv[2]
entries = []
for directory, dirs, files in os.walk(root):
    dirs[:] = sorted(d for d in dirs if d != "__pycache__")
    for name in sorted(files):
        if name.endswith(".pyc"):
            continue
        path = os.path.join(directory, name)
        entries.append((os.path.relpath(path, root), path))
with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
    for arcname, path in sorted(entries):
        info = zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0))
        mode = os.stat(path).st_mode
        info.external_attr = ((0o755 if mode & 0o111 else 0o644) | 0o100000) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        with open(path, "rb") as source:
            archive.writestr(info, source.read())
print(f"{out}: {len(entries)} files")
PY
