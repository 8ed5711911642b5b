#!/usr/bin/env bash
# The GPU figures in one run, on a GPU machine without internet whose Python has PyTorch,
# transformers and numba (a stock PyTorch GPU image), with gpu-kit/ (prepare.sh) in the
# repository root:
#   bash benchmarks/gpu/run.sh
# Steps, in this order (STEPS="..." runs some of them again, e.g. STEPS="encode build-padded"):
#   install         the kit's wheels (unless $PY has them already) and fastimg into $SITE
#                   (nothing outside it is touched), then random weights of MiniLM's shape (the
#                   default model's) and of bert-base's
#   gpu-tests       pytest -m gpu, first: the one check of the numbers on real hardware (packed
#                   attention against padded), before the long steps can use up the time
#   build-packed    a full-IMDB build (50,000 reviews, 512 tokens) on CUDA with MiniLM's
#                   shape, packed batches, stage by stage, its layout on every core
#                   (--tsne-threads -1, what a user after the fastest build passes)
#   encode          the encode benchmark on CUDA: every precision padded and packed against the
#                   author's loop, each one's model FLOP rate as a fraction of the fp16 matmul
#                   rate beside it (random bert-base)
#   build-padded    the same build in padded batches, its layout on one thread (the default):
#                   the two builds give the layout's time both ways
#   build-bert-base the same build with bert-base's shape, packed
# Each step runs under its own limit, cut to what is left of DEADLINE (seconds from the start,
# default 520: a lent machine runs one command for 600 s at most, and the last step may overrun
# its limit by 10 s of kill grace and 30 s of `fastimg info`); a step with under 20 s left is
# skipped. Everything goes to $RESULTS (default: $OUT when set, else bench-results/gpu):
# run.log, the tests' JUnit XML, the encode JSON and each build's `fastimg info --json`: at
# most 6 files.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
PY=${PY:-python3}
KIT=${KIT:-$REPO/gpu-kit}
SITE=${SITE:-/tmp/fastimg-site}
WORK=${WORK:-/tmp/fastimg-work}
RESULTS=${RESULTS:-${OUT:-$REPO/bench-results/gpu}}
DEADLINE=${DEADLINE:-520}
STEPS=${STEPS:-install gpu-tests build-packed encode build-padded build-bert-base}
DOCS=${DOCS:-4096}
# more build-dataset flags for every build, e.g. BUILD_FLAGS="--tsne-threads 16" (the layout's
# t-SNE runs on one thread by default, so that every machine gets the same layout)
BUILD_FLAGS=${BUILD_FLAGS:-}
# a try of this script on a machine without a GPU: DEVICE=cpu DOCS=16 LIMIT=200, with PY a
# Python that has fastimg's dependencies (PY=.venv/bin/python: the kit's wheels are for the GPU
# machine's Python)
DEVICE=${DEVICE:-cuda}
LIMIT=${LIMIT:+--limit $LIMIT}
export PYTHONUNBUFFERED=1 FASTIMG_DATA=$KIT/data PYTHONPATH=$SITE:$REPO PATH=$SITE/bin:$PATH
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

wanted() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

step() {  # NAME LIMIT_S COMMAND...: runs COMMAND from $WORK, so that fastimg comes from $SITE
  local name=$1 limit=$2 left=$((DEADLINE - SECONDS)) start=$SECONDS rc
  shift 2
  if ((left < 20)); then
    echo "== $name: skipped, ${left} s left of DEADLINE=$DEADLINE"
    return 1
  fi
  ((limit > left)) && limit=$left
  echo "== $name ($(date +%T), limit ${limit} s): $*"
  (cd "$WORK" && timeout -k 10 "$limit" "$@")
  rc=$?
  echo "== $name: exit $rc after $((SECONDS - start)) s"
  return $rc
}

install() {
  # the kit also pins numpy < 2.5, which numba-cuda's kernels need
  if ! $PY -c "import zarr, openTSNE, threadpoolctl, setuptools, numpy
assert int(setuptools.__version__.split('.')[0]) >= 77
assert tuple(map(int, numpy.__version__.split('.')[:2])) < (2, 5)" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" "$KIT"/wheels/*.whl || return 1
  fi
  $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --upgrade \
    --target "$SITE" "$REPO" \
  && $PY -c "from benchmarks.encode import random_model
random_model('$WORK/minilm-shape', '$KIT/minilm', config='$KIT/minilm')
random_model('$WORK/bert-base-shape', '$KIT/minilm')"
}

versions() {
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import os, sys, fastimg, numpy, torch, transformers, numba, zarr, openTSNE
print(sys.version.split()[0], 'fastimg', fastimg.__file__, 'numpy', numpy.__version__,
      'torch', torch.__version__, 'transformers', transformers.__version__, 'numba',
      numba.__version__, 'zarr', zarr.__version__, 'openTSNE', openTSNE.__version__, 'cpus',
      len(os.sched_getaffinity(0)))"
}

build() {  # STEP LIMIT_S MODEL BATCHING [FLAGS]
  local store="$WORK/$1.zarr"
  wanted "$1" || return 0
  # shellcheck disable=SC2086
  step "$1" "$2" fastimg build-dataset --dataset imdb $LIMIT ${5:-} $BUILD_FLAGS \
    --model "$WORK/$3" --device "$DEVICE" --batching "$4" --no-reuse --force --quiet --out "$store" \
  && (cd "$WORK" && timeout 30 fastimg info --json "$store" > "$RESULTS/$1.json")
}

main() {
  echo "== $(date -u +%FT%TZ) steps: $STEPS"
  export -f install versions
  export PY KIT SITE REPO WORK
  if wanted install; then step install 120 bash -c install || return 1; fi
  step versions 60 bash -c versions || return 1
  wanted gpu-tests && step gpu-tests 120 $PY -m pytest -c "$REPO/pyproject.toml" \
    --rootdir "$REPO" -q -rA --junitxml "$RESULTS/gpu-tests.xml" -m gpu -p no:cacheprovider \
    "$REPO/tests/test_gpu.py" "$REPO/tests/test_train.py"
  build build-packed 150 minilm-shape packed "--tsne-threads -1"
  wanted encode && step encode 200 $PY -m benchmarks encode --device "$DEVICE" --docs "$DOCS" \
    --tokenizer "$KIT/minilm" --json "$RESULTS/encode-$DEVICE.json"
  build build-padded 120 minilm-shape padded
  build build-bert-base 120 bert-base-shape packed
  echo "== done after $SECONDS s"
}

if [ ! -d "$KIT/wheels" ]; then
  echo "no $KIT/wheels: run benchmarks/gpu/prepare.sh first" >&2
  exit 2
fi
mkdir -p "$RESULTS" "$WORK"
main 2>&1 | tee -a "$RESULTS/run.log"
