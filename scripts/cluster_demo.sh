#!/usr/bin/env bash
# make cluster-demo: start a local Ray head (port 6380: 6379 is Redis's), submit preprocess
# and train through `ray job submit` with the packaged code (dist/pkg/rayrec from `make
# wheel`; a .whl in py_modules would be pip-installed WITH its dependencies), deploy the
# Serve config with `serve deploy`, query it, then stop the head.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RAY=.venv/bin/ray
SERVE=.venv/bin/serve
export RAY_AUTH_MODE=token            # Ray 2.60 CLI clients need the token (~/.ray/auth_token)
export DS_ACCELERATOR=cpu
PKG=$PWD/dist/pkg/rayrec
[ -f "$PKG/__init__.py" ] || { echo "run 'make wheel' first (no $PKG)"; exit 1; }
DATA=$PWD/../shared/data/rsc15-100k
[ -d "$DATA" ] || { echo "the cluster demo needs $DATA (see ../shared/data/README)"; exit 1; }
$RAY start --head --port=6380 --dashboard-host=127.0.0.1 --num-cpus=4
trap '$SERVE shutdown -y --address http://127.0.0.1:8265 >/dev/null 2>&1 || true; $RAY stop' EXIT
ADDR=http://127.0.0.1:8265
ENV="{\"py_modules\": [\"$PKG\"]}"
$RAY job submit --address $ADDR --runtime-env-json "$ENV" -- \
  $PWD/$PY -m rayrec.jobs.preprocess -c $PWD/jobs/configs/preprocess_rsc15.yaml output.path=$PWD/outputs/rsc15-100k \
  "source.paths.train_full=$DATA/yoochoose-clicks-100k_train_full.txt" \
  "source.paths.test=$DATA/yoochoose-clicks-100k_test.txt" \
  "source.paths.train_tr=$DATA/yoochoose-clicks-100k_train_tr.txt" \
  "source.paths.train_valid=$DATA/yoochoose-clicks-100k_train_valid.txt"
$RAY job submit --address $ADDR --runtime-env-json "$ENV" -- \
  $PWD/$PY -m rayrec.jobs.train -c $PWD/jobs/configs/gru4rec_rsc15.yaml data.path=$PWD/outputs/rsc15-100k \
  train.epochs=2 run.storage_path=$PWD/runs run.name=cluster-demo

# Serve: the shipped config with absolute paths (serve deploy takes no local py_modules; the
# nodes import rayrec from their install, as cluster.yaml's setup commands do)
CFG=$(mktemp --suffix=.yaml)
$PY - "$CFG" <<PYEOF
import sys, yaml
cfg = yaml.safe_load(open("serve_apps/configs/recommender.yaml"))
args = cfg["applications"][0]["args"]
args["session"].update(model_dir="$PWD/runs/cluster-demo",
                       store="sqlite:///$PWD/outputs/cluster-demo/sessions.db")
args["daily"]["store_path"] = "$PWD/outputs/cluster-demo/recs.db"
args["events"]["log_dir"] = "$PWD/outputs/cluster-demo/events"
yaml.safe_dump(cfg, open(sys.argv[1], "w"), sort_keys=False)
PYEOF
mkdir -p outputs/cluster-demo
$SERVE deploy "$CFG" --address $ADDR
for _ in $(seq 60); do
  curl -sf http://127.0.0.1:8000/health >/dev/null && break
  sleep 2
done
ITEMS=$($PY -c "import json; print(json.dumps(json.load(open('$(ls -d $PWD/runs/cluster-demo/checkpoint_*/ | tail -1)items.json'))[:3]))")
BODY=$($PY -c "import json,sys; print(json.dumps({'events': [{'session_id': 'cluster-demo', 'item_id': i} for i in json.loads(sys.argv[1])]}))" "$ITEMS")
echo "POST /events $BODY"
curl -sf -X POST -H 'content-type: application/json' -d "$BODY" http://127.0.0.1:8000/events; echo
echo "GET /sessions/cluster-demo/recommendations?k=5"
curl -sf "http://127.0.0.1:8000/sessions/cluster-demo/recommendations?k=5"; echo
echo "cluster demo done: checkpoints under runs/cluster-demo"
