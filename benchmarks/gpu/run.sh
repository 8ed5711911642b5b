#!/usr/bin/env bash
# The GPU figures in one run, on a GPU machine without internet whose Python has PyTorch,
# transformers and numba (a stock PyTorch GPU image), with gpu-kit/ (prepare.sh) in the
# repository root:
#   bash benchmarks/gpu/run.sh
# In order, each under its own time limit so that one stuck step cannot eat the rest:
#   1. installs the kit's wheels and fastimg into $SITE (nothing outside it is touched)
#   2. the GPU tests (pytest -m gpu)
#   3. the encode benchmark on CUDA: every precision padded and packed against the author's
#      loop, each one's model FLOP rate as a fraction of the fp16 matmul rate beside it
#   4. full-IMDB builds (50,000 reviews, 512 tokens) on CUDA, stage by stage, with random
#      weights of MiniLM's shape (the default model's) packed and padded, then bert-base's
# Everything goes to $RESULTS (default: $OUT when set, else bench-results/gpu): run.log, the
# encode JSON and each build's `fastimg info --json`; at most 8 files.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
PY=${PY:-python3}
KIT=${KIT:-$REPO/gpu-kit}
SITE=${SITE:-/tmp/fastimg-site}
WORK=${WORK:-/tmp/fastimg-work}
RESULTS=${RESULTS:-${OUT:-$REPO/bench-results/gpu}}
DOCS=${DOCS:-4096}
# a try of this script on a machine without a GPU: DEVICE=cpu DOCS=16 LIMIT=200
DEVICE=${DEVICE:-cuda}
LIMIT=${LIMIT:+--limit $LIMIT}
mkdir -p "$RESULTS" "$WORK"
exec > >(tee -a "$RESULTS/run.log") 2>&1
export PYTHONUNBUFFERED=1 FASTIMG_DATA=$KIT/data PYTHONPATH=$SITE:$REPO PATH=$SITE/bin:$PATH
test -d "$KIT/wheels" || { echo "no $KIT/wheels: run benchmarks/gpu/prepare.sh first" >&2; exit 2; }

step() {  # NAME LIMIT_S COMMAND...: runs COMMAND from $WORK, so that fastimg comes from $SITE
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  echo "== $name ($(date +%T), limit ${limit} s): $*"
  (cd "$WORK" && timeout "$limit" "$@")
  rc=$?
  echo "== $name: exit $rc after $((SECONDS - start)) s"
  return $rc
}

step install 120 bash -c "$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target $SITE $KIT/wheels/*.whl && $PY -m pip install -q --no-index --no-deps \
  --no-build-isolation --no-cache-dir --upgrade --target $SITE $REPO" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
(cd "$WORK" && $PY -c "import sys, fastimg, numpy, torch, transformers, numba, zarr, openTSNE
print(sys.version.split()[0], 'fastimg', fastimg.__file__, 'numpy', numpy.__version__, 'torch',
      torch.__version__, 'transformers', transformers.__version__, 'numba', numba.__version__,
      'zarr', zarr.__version__, 'openTSNE', openTSNE.__version__, 'cpus', len(__import__('os')
      .sched_getaffinity(0)))") || exit 1

step models 120 $PY -c "from benchmarks.encode import random_model
random_model('$WORK/minilm-shape', '$KIT/minilm', config='$KIT/minilm')
random_model('$WORK/bert-base-shape', '$KIT/minilm')"

step gpu-tests 150 $PY -m pytest -c "$REPO/pyproject.toml" --rootdir "$REPO" -q -m gpu \
  -p no:cacheprovider "$REPO/tests/test_gpu.py" "$REPO/tests/test_train.py"

step encode 240 $PY -m benchmarks encode --device "$DEVICE" --docs "$DOCS" \
  --tokenizer "$KIT/minilm" --json "$RESULTS/encode-$DEVICE.json"

build() {  # NAME LIMIT_S MODEL BATCHING
  # shellcheck disable=SC2086
  step "build-$1" "$2" fastimg build-dataset --dataset imdb $LIMIT --model "$WORK/$3" \
    --device "$DEVICE" \
    --batching "$4" --no-reuse --force --quiet --out "$WORK/$1.zarr" \
    && (cd "$WORK" && fastimg info --json "$1.zarr" > "$RESULTS/build-$1.json")
}
build minilm-packed 180 minilm-shape packed
build minilm-padded 180 minilm-shape padded
build bert-base-packed 180 bert-base-shape packed
echo "== done after $SECONDS s"
