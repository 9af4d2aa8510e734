#!/usr/bin/env bash
# Every result file that measures the openfwi-vel bundle, from nothing, in the order each needs the one before
# (docs/benchmarks.md#the-whole-chain): simulate the real FlatVel-A/CurveVel-A models (about 10 min), train the ARCH
# architecture with grouped batches for BUDGET minutes and evaluate it (retrieval_openfwi_vel), export it with the
# fast and int8 graphs, then retrieval_ood (noise, muted traces, calibration), service (the calibrated bundle against
# the untrained default architecture), encode, the held-out families as given, and simulator_speed; with REFINER=1
# also the learned refiner (55 min) and refine.json (about 30 min). Every step takes the shared CPU lock; every
# benchmark resumes what it finished before. Run from the repository root:
#     BUDGET=80 OUT=/tmp/results bash benchmarks/openfwi_vel_chain.sh
# BUDGET (minutes, <= 90; default 80), ARCH (architecture of model/config.py; default narrow),
# NAME (result stem of the training run; default retrieval_openfwi_vel),
# OUT (folder of the result files; default benchmarks/results), WORK (default .cache/openfwi_vel/chain_$BUDGET),
# TRAIN_ARGS (more options of benchmarks.openfwi_vel, e.g. "--snr-db -5 30 --mute-traces 1 25"), OOD_ARGS (more
# options of benchmarks.ood, e.g. "--family-count 200").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SB=${SEISBIND:-.venv/bin/seisbind}
BUDGET=${BUDGET:-80}
ARCH=${ARCH:-narrow}
NAME=${NAME:-retrieval_openfwi_vel}
OUT=${OUT:-benchmarks/results}
WORK=${WORK:-.cache/openfwi_vel/chain_$BUDGET}
CACHE=.cache/openfwi_vel
BUNDLE=$WORK/bundle_variants
LOCK=(flock /tmp/seisbind-cpu.lock)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$OUT"
step() { echo "== $(date -u +%H:%M:%S) $*" >&2; }
BANKS=(--bank $CACHE/flatvel_a/train --bank $CACHE/curvevel_a/train)

step "simulation, training ($BUDGET min) and evaluation"
# shellcheck disable=SC2086
"${LOCK[@]}" "$PY" -m benchmarks.openfwi_vel --arch "$ARCH" --budget-min "$BUDGET" --ablation-budget-min 0 \
  --neighbour-group 4 --work "$WORK" --name "$NAME" --out "$OUT" ${TRAIN_ARGS:-}
step "export with the fast and int8 graphs"
[ -f "$BUNDLE/manifest.json" ] || "${LOCK[@]}" "$SB" export --run "$WORK/runs/main_${BUDGET}min" --out "$BUNDLE" \
  --variant fast --variant int8
step "retrieval_ood: calibration, noise and muted traces"
# shellcheck disable=SC2086
"${LOCK[@]}" "$PY" -m benchmarks.ood --bundle "$BUNDLE" "${BANKS[@]}" --id-data $CACHE/flatvel_a/test \
  --id-data $CACHE/curvevel_a/test --work "$WORK/ood" --out "$OUT" ${OOD_ARGS:-}
step "calibrated bundle (the first 300 + 300 test gathers: for the service's cost, not for its figures)"
ID=$("$PY" -c "from seisbind.bundle import EncoderBundle; print(EncoderBundle('$BUNDLE').bundle_id)")
"${LOCK[@]}" "$SB" calibrate --encoders "$BUNDLE" --index "$WORK/ood/index_$ID" \
  --data "$WORK/ood/in_distribution/flatvel_a_test_first300" \
  --data "$WORK/ood/in_distribution/curvevel_a_test_first300" --out "${BUNDLE}_calibrated"
step "service against the untrained default architecture"
"${LOCK[@]}" "$PY" -m benchmarks.service --encoders "${BUNDLE}_calibrated" --previous-encoders default \
  --profile none --out "$OUT"
step "encode"
"${LOCK[@]}" "$PY" -m benchmarks.encode --bundle "$BUNDLE" \
  --reference benchmarks/results/retrieval_openfwi_vel_wide_85min.json --out "$OUT"
step "held-out families as given"
"${LOCK[@]}" "$PY" -m benchmarks.ood_heldout --bundle "$BUNDLE" "${BANKS[@]}" --section heldout_openfwi_vel_bundle \
  --work "$WORK/ood_heldout" --out "$OUT"
step "simulator_speed"
"${LOCK[@]}" "$PY" -m benchmarks.simulator_speed --runs 5 --out "$OUT"
if [ "${REFINER:-0}" = 1 ]; then
  step "learned refiner (55 min) and refine.json"
  "${LOCK[@]}" "$PY" -m benchmarks.refiner --data $CACHE/flatvel_a/train --data $CACHE/curvevel_a/train \
    --encoders "$BUNDLE" --workdir "$WORK/refiner" --budget-min 55 --threads 2 --k 20 --val-fraction 0.05 --out "$OUT"
  "${LOCK[@]}" "$PY" -m benchmarks.refine --bundle "$WORK/refiner/bundle" --n-vel 40 --n-heldout 15 --iterations 20 \
    --max-seconds 120 --threads 2 --bank-per-family 5000 --out "$OUT"
fi
step "done: result files in $OUT"
