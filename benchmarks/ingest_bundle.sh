#!/usr/bin/env bash
# The encoder bundle of benchmarks/results/ingest.json: a short real openfwi-vel training. The first 1000 training
# models of FlatVel-A and CurveVel-A (../shared/data/openfwi), simulated by the project simulator, 12 minutes of
# training of the quickstart's narrow architecture on the CPU. Writes runs/ofv/bundle. Run from the repository root,
# under the shared CPU lock:  flock /tmp/seisbind-cpu.lock bash benchmarks/ingest_bundle.sh
# then:                      flock /tmp/seisbind-cpu.lock python -m benchmarks.ingest --bundle runs/ofv/bundle \
#                                --bundle runs/qs/bundle      (runs/qs: `seisbind quickstart --no-serve --workdir runs/qs`)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
OPENFWI=${SEISBIND_OPENFWI_DIR:-../shared/data/openfwi}
W=runs/ofv
mkdir -p $W
echo '{"seis_trunk": [8, 16, 32], "seis_width": 64, "vel_width": 16, "phys_hidden": 128}' > $W/quick_model.json
for fam in flatvel_a curvevel_a; do
  [ -f $W/models_$fam.npy ] || python -c "
import numpy as np; from seisbind.openfwi import read_models
np.save('$W/models_$fam.npy', np.asarray(read_models('$OPENFWI/$fam/train_vmodel.zip').array()[:1000], np.float32))"
  seisbind simulate --models $W/models_$fam.npy --out $W/data/$fam --batch-size 8
done
seisbind train --data $W/data/flatvel_a --data $W/data/curvevel_a --out $W/run --time-budget-min 12 \
  --batch-size 64 --epochs 200 --threads 2 --model-config $W/quick_model.json
seisbind export --run $W/run --out $W/bundle
