#!/bin/sh
# Container entry point: `serve` (default of the serving images) starts the HTTP service on the encoder bundle
# and index root named by SEISBIND_ENCODERS / SEISBIND_INDEX_ROOT; anything else is passed to `seisbind`.
set -eu
if [ "${1:-}" = "serve" ]; then
  shift
  for path in "$SEISBIND_ENCODERS/manifest.json" "$SEISBIND_INDEX_ROOT"; do
    if [ ! -e "$path" ]; then
      echo "seisbind-entrypoint: $path is missing; populate the volume first (docker compose run bootstrap," \
           "or seisbind export / build-index into it)" >&2
      exit 2
    fi
  done
  token=${SEISBIND_ADMIN_TOKEN_FILE:-}
  if [ -n "$token" ] && [ -e "$token" ] && [ ! -r "$token" ]; then
    echo "seisbind-entrypoint: the admin token $token is not readable by uid $(id -u); on the host, make the" \
         "secret file readable by it (chmod 644, or chown $(id -u) and chmod 400)" >&2
    exit 2
  fi
  exec seisbind serve --encoders "$SEISBIND_ENCODERS" --index "$SEISBIND_INDEX_ROOT" \
    --host "$SEISBIND_HOST" --port "$SEISBIND_PORT" "$@"
fi
exec seisbind "$@"
