#!/usr/bin/env bash
# make gpu-check OUT=DIR [GPU_CHECK_ARGS="--device cpu --shape tiny"]: everything one GPU window
# runs, in one command, on a bare GPU machine after ../shared/GPU.md's unpack (the image's python3
# with PYTHONPATH=/tmp/gpu-site:$PWD) of the parts `make gpu-parts` packs (gpu-parts' own list
# and pandas, which Ray Data imports for the peers step). It installs nothing. Each step writes
# its log to OUT as it goes, and bench/gpu.py rewrites OUT/gpu.json after each of its steps, so a
# run cut short still returns what it measured. At most 8 files land in OUT (the device tool
# returns no more):
#   steps.log  what ran, exit status and seconds of each step
#   env.log    nvidia-smi and bench/gpu_env.py's report
#   env.json   GPU, driver, CUDA, cuDNN, library versions, onnxruntime's build and providers
#   bench.log  bench/gpu.py: exports, attention kernels, layouts, sentence-transformers, run
#   gpu.json   its figures (commit as bench/results/gpu.json)
#   tests.log  the gpu-marked tests
#   peers.log, peers.json  bench/peers.py --gpu: Ray Data + sentence-transformers vs embedpipe fp16
# Rehearse on a CPU with GPU_CHECK_ARGS="--device cpu --shape tiny" (the gpu tests then skip).
set -uo pipefail
out=${OUT:?set OUT=DIR, the folder whose files come back}
py=${PYTHON:-python3}
here=$(cd "$(dirname "$0")/.." && pwd)
corpus=${CORPUS:-}
for c in "$here/.gpuparts/stdlib_docs.parquet" "$here/../shared/bench/stdlib_docs.parquet"; do
  [[ -z $corpus && -f $c ]] && corpus=$c
done
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
cd "$here"

step() {  # step NAME LIMIT_S COMMAND...: its output to OUT/NAME.log, a summary line to steps.log
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  echo "== $name (at most ${limit}s): $*" | tee -a "$out/steps.log"
  timeout -k 10 "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  echo "== $name: exit $rc after $(($(date +%s) - start))s" | tee -a "$out/steps.log"
  tail -n 15 "$out/$name.log"
}


echo "gpu-check $(date -u +%FT%TZ) in $here, corpus ${corpus:-none}, args: $*" >"$out/steps.log"
step env 120 bash -c 'nvidia-smi; "$0" bench/gpu_env.py "$1"' "$py" "$out/env.json"
# 10,000 documents (2.5M tokens) and 2,000 per layout keep the check inside a 15-minute window;
# make bench-gpu runs 20,000 and 5,000.
step bench 420 "$py" bench/gpu.py --out "$out/gpu.json" --work /tmp/embedpipe-gpu-check \
  --docs 10000 --layout-docs 2000 ${corpus:+--corpus "$corpus"} "$@"
step tests 120 "$py" -m pytest -q -p no:cacheprovider -m gpu \
  tests/workers/test_gpu.py tests/pipelines/test_gpu_run.py
# last, so a window that runs short loses only this: make bench-peers's fp16 variants, on a
# random-weight MiniLM (the GPU machine lacks the package with its weights); a CPU rehearsal
# runs them on 300 documents
peers_on=()
[[ " $* " == *" --device cpu "* ]] && peers_on=(--device cpu --rows 300)
if ! "$py" -c "import pandas" 2>/dev/null; then  # Ray Data's; gpu-parts' own list lacks it
  echo "== peers: skipped, no pandas for Ray Data: pack the parts with make gpu-parts" \
    | tee -a "$out/steps.log"
elif [[ -n $corpus ]]; then
  step peers 150 "$py" bench/peers.py --gpu --rounds 1 --stand-in minilm \
    ${peers_on[@]+"${peers_on[@]}"} --out "$out/peers.json" --work /tmp/embedpipe-peers \
    --corpus "$corpus"
fi
echo "gpu-check done $(date -u +%FT%TZ)" | tee -a "$out/steps.log"
