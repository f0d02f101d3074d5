#!/usr/bin/env bash
# GPU acceptance check (issue 10): one command that proves the GPU side on a fresh machine with a
# CUDA GPU, nvcc, cmake, ninja, pybind11 and torch, and no network (nothing is downloaded).
#
#   scripts/gpu-check.sh [REPORT_DIR]        (default bench/out/gpu-check)
#
# Steps (each under its own time limit; a failed step is reported and the next one still runs):
#   build      the extension and tests/native/cuda_smoke.cpp with CUDA for this GPU's architecture
#   pytest     pytest -m cuda over the kernel, decoder and TensorRT conformance tests (junit.xml)
#   sanitize   compute-sanitizer memcheck (leak check), racecheck, synccheck and initcheck on the smoke
#              program: every CUDA launcher once (prefill, decode, split-KV, paged, int8 cache, linear,
#              qlinear w8/w4, norms, RoPE, SwiGLU, patch embedding) checked against the references
#   bench      GEMV vs copy bandwidth and cuBLAS, decode attention at context 512/2048/8192 as % of the
#              measured bandwidth, patch embedding vs torch, decode peers (HF eager, static cache +
#              torch.compile; ours again with RSVLM_EDGE_CUDA_PDL=off), per-kernel device time of a decode
#              step (bench/profile_decoder_cuda.py), the CLIP ViT-B/32 image tower on our CUDA kernels
#              (cuda-vit) vs open_clip fp16 (bench/bench_vit_cuda.py), top-p sampling numpy / CPU / CUDA
#              (bench/bench_sampling.py)
# REPORT_DIR gets gpu-check.log (all output), gpu-check.json and gpu-check.md (scripts/gpu_report.py),
# junit.xml. GPU_CHECK_BENCHES (default "gemv attention patch-embed profile decoder sampling vit") picks the benches and
# GPU_CHECK_DECODER_ARGS adds options to bench_decoder_cuda.py (e.g. "--peers eager --ours fp16").
# Exit status: 0 when build, pytest and every sanitizer tool passed, else 1.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
report_dir=${1:-bench/out/gpu-check}
mkdir -p "$report_dir"
report_dir=$(cd "$report_dir" && pwd)
work=$root/bench/out/gpu-check-work
rm -rf "$work" && mkdir -p "$work"
log=$report_dir/gpu-check.log
steps=$work/steps.jsonl
: >"$log"
: >"$steps"
export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
# dev-build.sh calls `python`: give it the interpreter that has torch when only python3 exists.
if ! command -v python >/dev/null 2>&1; then
  mkdir -p "$work/bin" && ln -sf "$(command -v "$py")" "$work/bin/python" && export PATH=$work/bin:$PATH
fi
started=$(date +%s)

# step NAME LIMIT_SECONDS CMD...: runs CMD with its output appended to the log, records rc + seconds.
step() {
  local name=$1 limit=$2
  shift 2
  local t0 rc
  t0=$(date +%s.%N)
  echo "===== $name (limit ${limit}s): $*" | tee -a "$log"
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  printf '{"step": "%s", "rc": %d, "seconds": %.1f}\n' "$name" "$rc" "$(awk "BEGIN { print $(date +%s.%N) - $t0 }")" >>"$steps"
  echo "===== $name rc=$rc" | tee -a "$log"
  return $rc
}

{
  # The device's checkout may carry a stale .git: the digest of the sources identifies what ran
  # (scripts/source_digest.py prints the same digest for a local checkout).
  echo "date: $(date -u +%FT%TZ)  commit: $(git describe --always --dirty 2>/dev/null || echo "?")  sources: $("$py" scripts/source_digest.py)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
  nvcc --version | tail -n 2
  "$py" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
} >>"$log" 2>&1

arch=${RSVLM_CUDA_ARCHS:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d '. ')}
step build 300 env RSVLM_CUDA=ON RSVLM_CUDA_ARCHS="$arch" scripts/dev-build.sh
built=$?

if [ $built -eq 0 ]; then
  # shellcheck disable=SC2046
  step pytest 240 "$py" -m pytest -m cuda -q -p no:cacheprovider -o addopts="" --junitxml="$report_dir/junit.xml" \
    $(ls tests/test_kernels_*.py tests/test_cuda_*.py tests/test_trt_conformance.py 2>/dev/null)
  for tool in memcheck racecheck synccheck initcheck; do
    extra=()
    [ "$tool" = memcheck ] && extra=(--leak-check full)
    step "sanitize-$tool" 120 compute-sanitizer --tool "$tool" "${extra[@]}" --error-exitcode 3 build/dev/rsvlm_cuda_smoke
  done
  benches=" ${GPU_CHECK_BENCHES:-gemv attention patch-embed profile decoder sampling vit} "
  want() { [[ $benches == *" $1 "* ]]; }
  want gemv && step bench-gemv 90 "$py" bench/bench_gemv_cuda.py --json "$work/gemv.json"
  bw=$("$py" -c "import json; print(round(json.load(open('$work/gemv.json'))['copy_bandwidth_gbs']))" 2>/dev/null || echo 3000)
  want attention && step bench-attention 90 "$py" bench/bench_kv_attention.py --device cuda --contexts 512 2048 8192 --batches 1 8 32 \
    --heads 32 --kv-heads 4 --head-dim 64 --peak-gbs "$bw" --out "$work/attention_tinyllama.json"
  want attention && step bench-attention-7b 90 "$py" bench/bench_kv_attention.py --device cuda --contexts 512 2048 8192 --batches 1 8 \
    --heads 32 --kv-heads 32 --head-dim 128 --int8 --peak-gbs "$bw" --out "$work/attention_7b.json"
  want patch-embed && step bench-patch-embed 90 "$py" bench/bench_patch_embed.py --device cuda --dtype float16 --batches 1,8,64 \
    --json "$work/patch_embed.json"
  # shellcheck disable=SC2086
  want profile && step profile-decoder 90 "$py" bench/profile_decoder_cuda.py --json "$work/profile_decoder.json"
  want decoder && step bench-decoder 300 "$py" bench/bench_decoder_cuda.py --json "$work/decoder.json" ${GPU_CHECK_DECODER_ARGS:-}
  # ours at fp16 / w8 without programmatic dependent launch: what PDL gains, measured in the same run
  want decoder && step bench-decoder-nopdl 120 env RSVLM_EDGE_CUDA_PDL=off "$py" bench/bench_decoder_cuda.py \
    --json "$work/decoder_nopdl.json" --peers --ours fp16 w8
  want sampling && step bench-sampling 60 "$py" bench/bench_sampling.py --batches 1 8 --iters 10 --json "$work/sampling.json"
  want vit && step bench-vit 150 "$py" bench/bench_vit_cuda.py --json "$work/vit_cuda.json" --workdir "$work/vit" --iters 10
fi

"$py" scripts/gpu_report.py --work "$work" --log "$log" --junit "$report_dir/junit.xml" \
  --seconds $(($(date +%s) - started)) --json "$report_dir/gpu-check.json" --md "$report_dir/gpu-check.md" 2>&1 | tee -a "$log"
exit "${PIPESTATUS[0]}"
