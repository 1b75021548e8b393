# syntax=docker/dockerfile:1
# NGINX with our template and the viewer baked in. Build from the repository root:
#   docker build -f docker/nginx.Dockerfile -t dicom-gateway-nginx:local .
# The official image renders /etc/nginx/templates/**/*.conf.template with envsubst into /etc/nginx/conf.d/ at start
# (docker-entrypoint.d/20-envsubst-on-templates.sh); its own main nginx.conf includes conf.d/*.conf. So the files the
# tests render (nginx/templates/) are the files this image serves (docs/design.md §7). nginx/nginx.conf is the
# main file of the non-root local stack (`stack up`, relative paths under its own prefix) and is deliberately not
# copied: in the image the official main file plays that role.

# --- viewer: the static bundle --------------------------------------------------------------------------------------
FROM node:20-bookworm-slim AS viewer
WORKDIR /viewer
COPY viewer/package.json viewer/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY viewer/ ./
RUN npm run build

# --- runtime ------------------------------------------------------------------------------------------------------
# 1.27 (mainline, Debian bookworm): our template targets Debian's 1.22 and uses nothing removed since; auth_request,
# SSI and envsubst (gettext-base) are in the official build, and curl is there for the health check.
FROM nginx:1.27-bookworm
# checkov:skip=CKV_DOCKER_3:The official image's entrypoint renders the templates and the master process starts as root, then runs every worker (everything that touches a request) as the unprivileged nginx user; the root filesystem is read-only in compose and ECS.
LABEL org.opencontainers.image.title="dicom-gateway-nginx" \
      org.opencontainers.image.description="NGINX front of dicom-gateway: auth_request, byte streaming, viewer" \
      org.opencontainers.image.licenses="Apache-2.0"
# The stock default server would answer on port 80 next to ours. njs (shipped in the official image) hashes the auth
# cache key (conf.d/njs/): the image's one module load, as nginx/nginx.conf does for the local stack; pcre_jit as there.
RUN rm -f /etc/nginx/conf.d/default.conf \
 && sed -i -e '1i load_module modules/ngx_http_js_module.so;' -e '1i pcre_jit on;' /etc/nginx/nginx.conf \
 && install -d -m 0755 /usr/share/dicomgw/viewer /usr/share/dicomgw/empty
COPY nginx/templates/ /etc/nginx/templates/
# the settings only NGINX reads, checked before the entrypoint's envsubst step (20-...) writes them into conf.d/;
# made executable here: the entrypoint skips a script that is not ("Ignoring ..."), as a checkout without the
# executable bit (Windows, core.fileMode=false, an archive) would leave it
COPY --chmod=0755 docker/nginx-check-env.sh /docker-entrypoint.d/15-dicomgw-check-env.sh
COPY --from=viewer /viewer/dist/ /usr/share/dicomgw/viewer/
# Defaults for a container behind a TLS-terminating proxy (ALB) or on a plain local port. Deployment-specific values
# (gateway and storage addresses, CORS, frame ancestors) come from the compose file or the ECS task definition.
ENV NGINX_ENVSUBST_TEMPLATE_DIR=/etc/nginx/templates \
    NGINX_ENVSUBST_OUTPUT_DIR=/etc/nginx/conf.d \
    NGINX_ENVSUBST_FILTER=^DICOMGW_ \
    DICOMGW_LISTEN=8080 \
    DICOMGW_LISTEN_OPTIONS=default_server \
    DICOMGW_TLS_CONF=conf.d/snippets/dgw-tls-off.conf \
    DICOMGW_TLS_CERT=/etc/nginx/tls/cert.pem \
    DICOMGW_TLS_KEY=/etc/nginx/tls/key.pem \
    DICOMGW_ACCESS_LOG=/dev/stdout \
    DICOMGW_CACHE_DIR=/var/cache/nginx \
    DICOMGW_VIEWER_ROOT=/usr/share/dicomgw/viewer \
    DICOMGW_AUTH_CACHE_SECONDS=2 \
    DICOMGW_MAX_BODY=4g \
    DICOMGW_MAX_UPLOADS=4 \
    DICOMGW_FILE_ORIGIN_LISTEN=127.0.0.1:8081 \
    DICOMGW_FILE_ROOT=/usr/share/dicomgw/empty \
    DICOMGW_CORS_ORIGIN_REGEX="^\$" \
    DICOMGW_FRAME_ANCESTORS="'self'"
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=4s --start-period=20s --retries=3 \
    CMD ["curl", "--fail", "--silent", "--show-error", "--max-time", "3", "--output", "/dev/null", "http://127.0.0.1:8080/healthz"]
