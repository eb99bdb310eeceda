#!/usr/bin/env bash
# The GPU machine's checks and benchmarks in one call, logs into $OUT: what `run` brings back.
# Here: npm run build && ../shared/tools/device-pack.sh build/Release/kvoff.node dist   (then carry .device; only the
#   addon of build/, whose object files would push the carry past 64 MiB)
# There: source .device/unpack.sh && bash bench/gpu-run.sh [tests] [sanitizer] [kernels] [decode] [decode-quick]
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv > "$OUT/nvidia-smi.txt" 2>&1
vitest() { node node_modules/vitest/vitest.mjs run "$@"; }
for what in "${@:-tests}"; do
  case "$what" in
    tests) vitest test/gpu 2>&1 | tail -150 > "$OUT/gpu-tests.log" ;;
    sanitizer) # every GPU test under memcheck; kernels run 10-100x slower there
      /usr/local/cuda/bin/compute-sanitizer --tool memcheck --target-processes all --print-limit 20 \
        node node_modules/vitest/vitest.mjs run test/gpu --testTimeout 600000 2>&1 | tail -80 > "$OUT/sanitizer.log" ;;
    kernels) node dist/bench/cuda-kernels.js 2>&1 | tail -60 > "$OUT/cuda-kernels.log" ;;
    decode) node dist/bench/cuda-decode.js --profile --json "$OUT/cuda-decode.json" 2>&1 | tail -60 > "$OUT/cuda-decode.log" ;;
    decode-quick) node dist/bench/cuda-decode.js --profile --context 16384 --steps 4 --warmup 1 --exact-steps 1 2>&1 | tail -60 > "$OUT/cuda-decode-quick.log" ;;
    *) echo "unknown step $what" >> "$OUT/errors.log" ;;
  esac
done
ls -la "$OUT"
