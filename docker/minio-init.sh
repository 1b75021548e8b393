#!/bin/sh
# One-shot set-up of the compose stack's MinIO (runs in the minio/mc image, see docker-compose.yml):
# the bucket, with anonymous access off, and a gateway user that may touch only that bucket's three prefixes, the
# same prefixes the Terraform task role gets on S3. Idempotent: a second `docker compose up` changes nothing.
set -eu

: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${DICOMGW_BUCKET:?}"
: "${DICOMGW_S3_ACCESS_KEY_ID:?}" "${DICOMGW_S3_SECRET_ACCESS_KEY:?}"

mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "local/$DICOMGW_BUCKET"
mc anonymous set none "local/$DICOMGW_BUCKET"

policy=/tmp/dicomgw-policy.json
cat >"$policy" <<JSON
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["s3:GetBucketLocation", "s3:ListBucket"],
     "Resource": ["arn:aws:s3:::$DICOMGW_BUCKET"]},
    {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
     "Resource": ["arn:aws:s3:::$DICOMGW_BUCKET/studies/*",
                  "arn:aws:s3:::$DICOMGW_BUCKET/quarantine/*",
                  "arn:aws:s3:::$DICOMGW_BUCKET/incoming/*"]}
  ]
}
JSON
mc admin policy create local dicomgw-gateway "$policy" >/dev/null
if ! mc admin user info local "$DICOMGW_S3_ACCESS_KEY_ID" >/dev/null 2>&1; then
    mc admin user add local "$DICOMGW_S3_ACCESS_KEY_ID" "$DICOMGW_S3_SECRET_ACCESS_KEY" >/dev/null
fi
# attach fails when the policy is already attached (a re-run); then the user info must show it, or we stop here.
mc admin policy attach local dicomgw-gateway --user "$DICOMGW_S3_ACCESS_KEY_ID" >/dev/null 2>&1 \
    || mc admin user info local "$DICOMGW_S3_ACCESS_KEY_ID" | grep -q dicomgw-gateway
echo "minio ready: bucket $DICOMGW_BUCKET, gateway user $DICOMGW_S3_ACCESS_KEY_ID"
