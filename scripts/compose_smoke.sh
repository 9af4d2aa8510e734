#!/usr/bin/env bash
# End-to-end check of the docker compose deployment: builds the CPU images (bootstrap + api), brings the stack up
# (bootstrap runs the quickstart pipeline into a fresh volume, then api serves it), waits for /readyz, sends a real
# /retrieve request with a .npy body (a held-out gather the bootstrap wrote), checks the neighbours, checks the
# container HEALTHCHECK, the container hardening (non-root, no capabilities, read-only root filesystem), /v1/info
# and the admin token (compose secret) with an index rebuild, then a refinement job (POST /refine with the .npy bytes,
# run by one of two `refiner` workers through `redis`, polled to completion; its refined model must be closer to the
# truth than its start), and always tears the stack down with its volumes (`docker compose down -v`), on success,
# failure or Ctrl-C.
#
# Usage: scripts/compose_smoke.sh [--sandbox] [--keep-images]
#   --sandbox  first run ../shared/scripts/docker-sandbox.sh (relative to the repository; or $SEISBIND_DOCKER_SANDBOX),
#              which installs and starts a Docker engine with Compose v2 and builds a local base image, used as
#              BASE_IMAGE; CPU torch wheels are then taken from /opt/wheels (or $SEISBIND_WHEELS_DIR).
# Environment:
#   SEISBIND_BASE_IMAGE         base image of the CPU images (default python:3.11-slim; with --sandbox its image)
#   SEISBIND_WHEELS_DIR         folder with a CPU torch wheel to build the bootstrap image from (no torch index)
#   SEISBIND_QUICKSTART_PRESET  quickstart preset of the bootstrap (default small: a few minutes on 2 cores)
#   SEISBIND_THREADS            CPU threads of the bootstrap pipeline (default 1: robust on a busy machine)
#   SEISBIND_SMOKE_PORT         host port of the api (default 18000)
#   SEISBIND_SMOKE_TIMEOUT      seconds to wait for readiness after `up` (default 900)
#   SEISBIND_SMOKE_ITERATIONS   FWI iterations of the refinement job (default 20)
# Runs as a separate compose project (seisbind-smoke), so it never touches the volume of a real deployment.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

SANDBOX=0
for arg in "$@"; do
  case "$arg" in
    --sandbox) SANDBOX=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "compose_smoke: unknown argument $arg" >&2; exit 2 ;;
  esac
done

log() { echo "[compose-smoke] $*" >&2; }
die() { log "FAILED: $*"; exit 1; }

if [ "$SANDBOX" = 1 ]; then
  sandbox=${SEISBIND_DOCKER_SANDBOX:-$REPO/../shared/scripts/docker-sandbox.sh}
  [ -f "$sandbox" ] || die "--sandbox: $sandbox not found (set SEISBIND_DOCKER_SANDBOX)"
  log "setting up the Docker sandbox ($sandbox)"
  base=$(bash "$sandbox" | tail -n 1)
  export SEISBIND_BASE_IMAGE=${SEISBIND_BASE_IMAGE:-$base}
  if [ -z "${SEISBIND_WHEELS_DIR:-}" ] && [ -d /opt/wheels ]; then export SEISBIND_WHEELS_DIR=/opt/wheels; fi
fi
command -v docker >/dev/null || die "no docker client"
docker info >/dev/null 2>&1 || die "no reachable Docker engine (use --sandbox on a machine without one)"
docker compose version >/dev/null 2>&1 || die "no Compose v2 (docker compose)"
command -v curl >/dev/null || die "curl is needed"

# A CPU torch wheel given locally: build the bootstrap image from it, without the PyTorch index.
if [ -n "${SEISBIND_WHEELS_DIR:-}" ]; then
  found=0
  for wheel in "$SEISBIND_WHEELS_DIR"/torch-*+cpu-*.whl; do
    [ -f "$wheel" ] || continue
    ln -f "$wheel" docker/wheels/ 2>/dev/null || cp -f "$wheel" docker/wheels/
    found=1
  done
  [ "$found" = 1 ] || die "no torch-*+cpu-*.whl in $SEISBIND_WHEELS_DIR"
  export SEISBIND_TORCH_INDEX_URL=""
fi

export COMPOSE_PROJECT_NAME=seisbind-smoke
export SEISBIND_QUICKSTART_PRESET=${SEISBIND_QUICKSTART_PRESET:-small}
export SEISBIND_THREADS=${SEISBIND_THREADS:-1}
export SEISBIND_PORT=${SEISBIND_SMOKE_PORT:-18000}
TIMEOUT=${SEISBIND_SMOKE_TIMEOUT:-900}
BASE="http://127.0.0.1:$SEISBIND_PORT"
WORK=$(mktemp -d)
TOKEN=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
printf '%s\n' "$TOKEN" > "$WORK/admin_token"
chmod 644 "$WORK/admin_token"  # the container user (uid 10001) reads the bind-mounted secret
export SEISBIND_ADMIN_TOKEN_PATH="$WORK/admin_token"

cleanup() {
  status=$?
  if [ "$status" != 0 ]; then
    log "logs of the failed run:"
    docker compose logs --no-color --tail 80 >&2 || true
  fi
  log "tearing down (docker compose down -v)"
  docker compose down -v --remove-orphans >/dev/null 2>&1 || log "warning: docker compose down failed"
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t0=$(date +%s)
log "building the CPU images (base ${SEISBIND_BASE_IMAGE:-python:3.11-slim})"
docker compose build bootstrap api redis refiner
log "images built in $(( $(date +%s) - t0 )) s"

t1=$(date +%s)
log "docker compose up -d --scale refiner=2 (bootstrap preset $SEISBIND_QUICKSTART_PRESET, then api; redis, refiner)"
docker compose up -d --scale refiner=2 || die "docker compose up failed"
log "bootstrap finished and api started in $(( $(date +%s) - t1 )) s; the bootstrap's summary:"
docker compose logs --no-color --no-log-prefix bootstrap 2>/dev/null | grep -E '^\[[0-9]/[0-9]\]|held-out retrieval|descriptors inferred' >&2 || true

log "waiting for $BASE/readyz"
deadline=$(( $(date +%s) + TIMEOUT ))
until [ "$(curl -s -o /dev/null -w '%{http_code}' "$BASE/readyz" || true)" = 200 ]; do
  [ "$(date +%s)" -lt "$deadline" ] || die "/readyz not 200 after ${TIMEOUT}s"
  sleep 2
done
log "ready $(( $(date +%s) - t1 )) s after up"

# A real held-out gather from the volume: float32 [1, 5, 1000, 70] as .npy bytes.
docker compose cp api:/data/example/query.npy "$WORK/query.npy" >/dev/null
code=$(curl -sS -o "$WORK/retrieve.json" -w '%{http_code}' -X POST "$BASE/retrieve?k=5" \
  -H 'Content-Type: application/x-npy' --data-binary @"$WORK/query.npy")
[ "$code" = 200 ] || die "/retrieve answered $code: $(head -c 500 "$WORK/retrieve.json")"
python3 - "$WORK/retrieve.json" <<'PY' || die "/retrieve response is not as DESIGN section 6 says"
import json, sys
doc = json.load(open(sys.argv[1]))
(result,) = doc["results"]
hits = result["neighbors"]
assert len(hits) == 5, f"{len(hits)} neighbours, expected 5"
assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5], hits
scores = [h["score"] for h in hits]
assert scores == sorted(scores, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in scores), scores
assert all(h["id"] and "v_mean" in h["descriptors"] and "file" in h["source"] for h in hits), hits[0]
assert doc["encoder"] and doc["index_version"], doc.keys()
print(f"[compose-smoke] /retrieve: 200, top-5 {[(h['id'], round(h['score'], 3)) for h in hits]}", file=sys.stderr)
PY

curl -fsS "$BASE/v1/info" > "$WORK/info.json" || die "/v1/info failed"
grep -q CPUExecutionProvider "$WORK/info.json" || die "/v1/info does not name the execution provider: $(cat "$WORK/info.json")"

# The image's HEALTHCHECK (python urllib against /healthz) must report healthy.
cid=$(docker compose ps -q api)
for _ in $(seq 1 30); do
  health=$(docker inspect -f '{{.State.Health.Status}}' "$cid")
  [ "$health" = healthy ] && break
  sleep 2
done
[ "$health" = healthy ] || die "api container health is '$health'"
log "api container: $health"

# Hardening (docker-compose.yml x-hardening): every process of the api container runs as a non-root user, without
# capabilities and with no_new_privs; the root filesystem is read-only even for root (exec -u 0), /tmp is writable.
uids=$(docker compose exec -T api sh -c 'for f in /proc/[0-9]*/status; do awk "/^Uid:/{print \$2}" "$f" 2>/dev/null;
  done; true' | sort -u | xargs || true)
[ -n "$uids" ] && ! echo " $uids" | grep -qw 0 || die "api container processes run as uids '$uids' (root among them)"
caps=$(docker compose exec -T api sh -c 'grep -E "^(CapEff|CapBnd|NoNewPrivs):" /proc/1/status' \
  | tr -s ' \t\r\n' ' ' || true)
echo "$caps" | grep -q 'CapEff: 0000000000000000' && echo "$caps" | grep -q 'CapBnd: 0000000000000000' \
  && echo "$caps" | grep -q 'NoNewPrivs: 1' || die "api container capabilities / no_new_privs: $caps"
if out=$(docker compose exec -T -u 0 api sh -c 'touch /x /usr/local/bin/x' 2>&1); then
  die "root could write to the api container's root filesystem"
fi
echo "$out" | grep -qi 'read-only file system' || die "writing / failed, but not as read-only: $out"
docker compose exec -T api sh -c 'echo ok > /tmp/probe && rm /tmp/probe' || die "/tmp is not writable in api"
[ "$(docker inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$cid")" = true ] || die "api: ReadonlyRootfs is not set"
log "api container hardened: uids $uids, $caps, read-only root filesystem (writable /tmp)"

# The admin token is the compose secret: a rebuild without it is refused, with it accepted and swapped in.
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$BASE/admin/rebuild-index" -H 'Content-Type: application/json' \
  -d '{"bank": "bank", "index_type": "flat"}')
[ "$code" = 401 ] || die "rebuild without a token answered $code, expected 401"
curl -fsS -X POST "$BASE/admin/rebuild-index" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '{"bank": "bank", "index_type": "flat"}' > "$WORK/job.json" || die "rebuild with the token was refused"
job=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["job_id"])' "$WORK/job.json")
state=queued
for _ in $(seq 1 150); do
  curl -fsS -H "Authorization: Bearer $TOKEN" "$BASE/admin/jobs/$job" > "$WORK/state.json"
  state=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["state"])' "$WORK/state.json")
  case "$state" in succeeded|failed) break ;; esac
  sleep 2
done
[ "$state" = succeeded ] || die "rebuild job $job ended '$state': $(cat "$WORK/state.json")"
log "admin rebuild with the secret token: $state"

# Refinement: two workers (--scale refiner=2) registered on the queue; a job with the .npy bytes, polled to
# completion; the refined model must be closer to the truth (the example's velocity model, read from the volume)
# than its start (the retrieved top-1).
workers=0
for _ in $(seq 1 60); do
  workers=$(docker compose exec -T redis redis-cli SCARD rq:workers:seisbind-refine | tr -dc 0-9)
  [ "${workers:-0}" -ge 2 ] && break
  sleep 2
done
[ "${workers:-0}" = 2 ] || die "refinement workers registered: ${workers:-0}, expected 2"
log "refinement workers registered: $workers"
docker compose exec -T api python - > "$WORK/truth.json" <<'PY' || die "could not find the example's velocity model"
import json, sys
from pathlib import Path
import numpy as np
from seisbind.openfwi import open_dataset
query = np.load("/data/example/query.npy")[0]
for folder in sorted(p for p in Path("/data/data/test").iterdir() if p.is_dir()):
    ds = open_dataset(folder)
    if np.array_equal(np.asarray(ds.data[0][0]), query):
        json.dump(np.asarray(ds.models[0][0, 0], np.float64).tolist(), sys.stdout)
        break
else:
    sys.exit("no test dataset under /data/data/test holds the example gather")
PY
ITERATIONS=${SEISBIND_SMOKE_ITERATIONS:-20}
code=$(curl -sS -o "$WORK/refine.json" -w '%{http_code}' -X POST \
  "$BASE/refine?method=fwi&start=top1&iterations=$ITERATIONS" \
  -H 'Content-Type: application/x-npy' --data-binary @"$WORK/query.npy")
[ "$code" = 202 ] || die "/refine answered $code: $(head -c 500 "$WORK/refine.json")"
job=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["job_id"])' "$WORK/refine.json")
state=queued
deadline=$(( $(date +%s) + 900 ))
while [ "$(date +%s)" -lt "$deadline" ]; do
  curl -fsS "$BASE/refine/$job" > "$WORK/job.json" || die "GET /refine/$job failed"
  state=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["state"])' "$WORK/job.json")
  case "$state" in succeeded|failed|cancelled) break ;; esac
  sleep 3
done
[ "$state" = succeeded ] || die "refinement job $job ended '$state': $(head -c 800 "$WORK/job.json")"
python3 - "$WORK/job.json" "$WORK/truth.json" "$job" <<'PY' || die "the refined model is not closer to the truth"
import json, sys
doc, truth = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
result = doc["result"]
def mae(model):
    return sum(abs(a - b) for ra, rb in zip(model, truth) for a, b in zip(ra, rb)) / (len(truth) * len(truth[0]))
start, refined = mae(result["start_model"]), mae(result["velocity_model"])
print(f"[compose-smoke] /refine: job {sys.argv[3]} succeeded; MAE to the truth: start {start:.1f} m/s, refined "
      f"{refined:.1f} m/s; misfit {result['start_misfit']:.4g} -> {result['final_misfit']:.4g} in "
      f"{result['iterations']} iterations, {result['seconds']:.0f} s", file=sys.stderr)
assert refined < start, (start, refined)
PY
curl -fsS "$BASE/metrics" | grep -q '^seisbind_refine_jobs_total{outcome="succeeded"} 1.0$' \
  || die "/metrics does not count the succeeded refinement job"

log "OK: compose stack served /retrieve in $(( $(date +%s) - t0 )) s from the start of the build"
