#!/usr/bin/env bash
# make cluster-demo: start a local Ray head (port 6380: 6379 is Redis's), build the rayrec
# wheel, submit preprocess and train through `ray job submit`, then stop the head.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RAY=.venv/bin/ray
export RAY_AUTH_MODE=token            # Ray 2.60 CLI clients need the token (~/.ray/auth_token)
export DS_ACCELERATOR=cpu
rm -rf dist && $PY -m pip wheel -q --no-deps --no-build-isolation -w dist .
WHEEL=$(ls dist/rayrec-*.whl)
$RAY start --head --port=6380 --dashboard-host=127.0.0.1 --num-cpus=4
trap '$RAY stop' EXIT
ADDR=http://127.0.0.1:8265
ENV="{\"py_modules\": [\"$PWD/$WHEEL\"]}"
$RAY job submit --address $ADDR --runtime-env-json "$ENV" -- \
  $PWD/$PY -m rayrec.jobs.preprocess -c $PWD/jobs/configs/preprocess_rsc15.yaml output.path=$PWD/outputs/rsc15-100k \
  "source.paths.train_full=$PWD/../shared/data/rsc15-100k/yoochoose-clicks-100k_train_full.txt" \
  "source.paths.test=$PWD/../shared/data/rsc15-100k/yoochoose-clicks-100k_test.txt" \
  "source.paths.train_tr=$PWD/../shared/data/rsc15-100k/yoochoose-clicks-100k_train_tr.txt" \
  "source.paths.train_valid=$PWD/../shared/data/rsc15-100k/yoochoose-clicks-100k_train_valid.txt"
$RAY job submit --address $ADDR --runtime-env-json "$ENV" -- \
  $PWD/$PY -m rayrec.jobs.train -c $PWD/jobs/configs/gru4rec_rsc15.yaml data.path=$PWD/outputs/rsc15-100k \
  train.epochs=2 run.storage_path=$PWD/runs run.name=cluster-demo
echo "cluster demo done: checkpoints under runs/cluster-demo"
