#!/usr/bin/env bash
# Issue 15 on one GPU, in at most 8 minutes: MFU before and after, the numerics check,
# and the SD1.5-size dress rehearsal (build, phases, ablate run with SIGKILL and resume).
#
#   bash benchmarks/gpu_issue15.sh [OUT_DIR]     (default OUT_DIR: benchmarks)
#
# Rows are JSON lines appended as they are measured, so a cut-short run keeps what it
# measured: OUT_DIR/gpu_mfu.jsonl and OUT_DIR/gpu_dress_rehearsal.jsonl. Each stage has its
# own time limit, in priority order (the MFU table first), so the whole stays under 480 s.
# The built data root (ISSUE15_ROOT, default /tmp/issue15-data, ~15 GB; the run adds two
# 24 GB checkpoints) is reused by a rerun on the same machine, which saves the build.
# PYTHON: the interpreter with torch, diffusers, transformers, open_clip, clean-fid, ray.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-benchmarks}
ROOT=${ISSUE15_ROOT:-/tmp/issue15-data}
mkdir -p "$OUT"
started=$SECONDS
stage() {  # stage NAME SECONDS COMMAND...: run with a limit, record how it ended
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "{\"kind\": \"stage\", \"stage\": \"$name\", \"exit_code\": $rc, \"seconds\": $((SECONDS - t0)), \"limit_s\": $limit}" \
    | tee -a "$OUT/gpu_stages.jsonl"
}

# 1. MFU before (plain) and after (the levers), at the last measured micro-batch.
stage mfu 90 "$PY" -m benchmarks.gpu_sd15 "$OUT/gpu_mfu.jsonl" \
  --strategies lsg none --precisions bf16 fp32 --micro-batches 4 \
  --options plain nosync+channels_last --warmup 2 --timed 3
# 2. Larger micro-batches, now that memory allows (bf16 lsg).
stage mfu-large 60 "$PY" -m benchmarks.gpu_sd15 "$OUT/gpu_mfu.jsonl" \
  --strategies lsg --precisions bf16 --micro-batches 8 16 \
  --options nosync+channels_last --warmup 1 --timed 3
# 3. Numerics: G's gradient with the levers against plain, fp32 and bf16, on the SD-shaped
#    UNet and the trained embedded teacher (no timing rows).
stage numerics 50 "$PY" -m benchmarks.gpu_sd15 "$OUT/gpu_mfu.jsonl" \
  --precisions fp32 bf16 --micro-batches --options nosync+channels_last --numerics
# 4. torch.compile on top (its compile time is a column of the row).
stage mfu-compile 80 "$PY" -m benchmarks.gpu_sd15 "$OUT/gpu_mfu.jsonl" \
  --strategies lsg --precisions bf16 --micro-batches 8 \
  --options nosync+channels_last+compile --warmup 1 --timed 3
# 5. The SD1.5-size data root (skipped when a previous run built it).
if [ ! -f "$ROOT/dress-rehearsal.json" ]; then
  stage build 90 "$PY" -m benchmarks.dress_rehearsal build "$ROOT"
fi
# 6. Each phase of a trial, timed in one process (256 images: per-image costs).
stage phases 80 "$PY" -m benchmarks.dress_rehearsal phases "$ROOT" \
  "$OUT/gpu_dress_rehearsal.jsonl" --images 256
# 7. The plan through ablate run: SIGKILL after the first checkpoint, resume, 1000 images.
left=$((470 - (SECONDS - started)))
stage rehearsal "$left" "$PY" -m benchmarks.dress_rehearsal run "$ROOT" \
  "$OUT/gpu_dress_rehearsal.jsonl" --timeout $((left - 15))
echo "total seconds: $((SECONDS - started))"
