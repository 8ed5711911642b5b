#!/usr/bin/env bash
# Gathers into gpu-kit/ what a GPU machine without internet needs for benchmarks/gpu/run.sh.
#
# Run here, on a machine with pip access and the IMDB reviews, from anywhere:
#   bash benchmarks/gpu/prepare.sh
# gpu-kit/ (ignored by git, about 57 MB: under the 64 MiB a lent GPU machine can be sent) holds
#   wheels/  the packages fastimg needs that a stock PyTorch GPU image lacks (zarr and its
#            codecs, openTSNE, threadpoolctl), at the versions installed here, built for that
#            machine's Python, and numpy at this machine's version, which must be below 2.5
#            (numba-cuda 0.30's kernels fail to compile under numpy 2.5, which such images may
#            hold), and
#            setuptools, which builds fastimg there (its SPDX license needs setuptools >= 77)
#   data/    imdb/imdb.csv.gz, the 50,000 IMDB reviews
#   minilm/  all-MiniLM-L6-v2's config and tokenizer, without its 87 MB of weights: run.sh gives
#            the model random weights (an encoder's speed does not depend on their values)
#
# Variables: PY (this machine's Python with fastimg installed; default .venv/bin/python),
# FASTIMG_DATA (the folder holding imdb/imdb.csv.gz; default ../shared/data), TARGET_PYTHON (the
# GPU machine's Python version; default 3.12), KIT (default gpu-kit).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DATA=${FASTIMG_DATA:-../shared/data}
TARGET_PYTHON=${TARGET_PYTHON:-3.12}
KIT=${KIT:-gpu-kit}
PACKAGES="numpy zarr numcodecs donfig google-crc32c openTSNE threadpoolctl setuptools"

if [ ! -f "$DATA/imdb/imdb.csv.gz" ]; then
  echo "no $DATA/imdb/imdb.csv.gz: set FASTIMG_DATA" >&2
  exit 2
fi
rm -rf "$KIT" && mkdir -p "$KIT/wheels" "$KIT/data/imdb" "$KIT/minilm"

pins=$("$PY" -c "import importlib.metadata as m, sys
numpy = tuple(int(x) for x in m.version('numpy').split('.')[:2])
if numpy >= (2, 5):
    sys.exit(f'numpy here is {m.version(\"numpy\")}: numba-cuda 0.30 needs numpy < 2.5')
print(' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))" $PACKAGES) || exit 2
platforms=""
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms="$platforms --platform $p"
done
# shellcheck disable=SC2086
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
  --python-version "$TARGET_PYTHON" $platforms -d "$KIT/wheels" $pins

cp "$DATA/imdb/imdb.csv.gz" "$KIT/data/imdb/"
minilm=$("$PY" -c "from fastimg.embed.models import resolve_model
print(resolve_model('minilm').folder)")
for f in config.json vocab.txt tokenizer.json tokenizer_config.json special_tokens_map.json; do
  cp "$minilm/$f" "$KIT/minilm/"
done
size=$(du -sb "$KIT" | cut -f1)
echo "$KIT: $((size / 1000000)) MB ($pins)"
# a lent machine is sent 64 MiB at most, the checkout's tracked files (about 1 MB) included
if ((size > 62000000)); then
  echo "$KIT is over 62 MB: it would not fit beside the checkout in 64 MiB" >&2
  exit 2
fi
