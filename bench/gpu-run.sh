#!/usr/bin/env bash
# The GPU machine's checks and benchmarks in one call, logs into $OUT: what `run` brings back.
# Here: npm run build && ../shared/tools/device-pack.sh build/Release/kvoff.node dist   (then carry .device; only the
#   addon of build/, whose object files would push the carry past 64 MiB). If the pack still exceeds the carry, use a
#   copy of that script with more exclusions (2026-11-23: 51 MiB), made by
#     sed -e "s#--exclude='node_modules/.cache' \\\\#--exclude='node_modules/.cache' --exclude='node_modules/vega*' --exclude='node_modules/d3-*' --exclude='node_modules/@types' --exclude='node_modules/protobufjs/dist' --exclude='*.map' --exclude='*.d.ts' \\\\#" \
#       -e 's/xz -T0 -3/xz -T0 -9e/' ../shared/tools/device-pack.sh > /tmp/device-pack.sh
#   and .device/node.tar.xz holding only the node binary (as bin/node: 23 MiB; npm is not needed there).
# There: source .device/unpack.sh && bash bench/gpu-run.sh [tests] [tests-FILE] [sanitizer] [sanitizer-FILE] [kernels] [prefill] [lowbit] [ncu-tail] [decode] [decode-specache] [decode-quick] [engine]
#   [engine-131k-POLICY] [pool] [tune-131k] [batch-24k] [batch-kernels]
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv > "$OUT/nvidia-smi.txt" 2>&1
vitest() { node node_modules/vitest/vitest.mjs run "$@"; }
for what in "${@:-tests}"; do
  case "$what" in
    tests) vitest test/gpu 2>&1 | tail -150 > "$OUT/gpu-tests.log" ;;
    tests-*) vitest "test/gpu/${what#tests-}.test.ts" 2>&1 | tail -80 > "$OUT/gpu-tests-${what#tests-}.log" ;;
    sanitizer) # every GPU test under memcheck; kernels run 10-100x slower there
      /usr/local/cuda/bin/compute-sanitizer --tool memcheck --target-processes all --print-limit 20 \
        node node_modules/vitest/vitest.mjs run test/gpu --testTimeout 600000 2>&1 | tail -80 > "$OUT/sanitizer.log" ;;
    sanitizer-*) # one GPU test file under memcheck; SANITIZE_FILTER="name pattern" keeps only matching tests
      /usr/local/cuda/bin/compute-sanitizer --tool memcheck --target-processes all --print-limit 20 \
        node node_modules/vitest/vitest.mjs run "test/gpu/${what#sanitizer-}.test.ts" --testTimeout 600000 \
        ${SANITIZE_FILTER:+-t "$SANITIZE_FILTER"} 2>&1 | tail -60 > "$OUT/sanitizer-${what#sanitizer-}.log" ;;
    ncu-tail) # Nsight Compute on one 131k two-row 1-bit tail chunk kernel (the specache decode shape)
      n=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
      $n --kernel-name-base demangled --kernel-name "regex:attend2_kernel<\\(int\\)1, \\(int\\)128, \\(int\\)8, \\(bool\\)1>" --launch-skip 2 --launch-count 1 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats \
        --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section InstructionStats \
        node dist/bench/cuda-lowbit.js --quick > "$OUT/ncu-tail.log" 2>&1 ;;
    kernels) node dist/bench/cuda-kernels.js 2>&1 | tail -60 > "$OUT/cuda-kernels.log" ;;
    decode) node dist/bench/cuda-decode.js --profile --json "$OUT/cuda-decode.json" 2>&1 | tail -60 > "$OUT/cuda-decode.log" ;;
    decode-specache) node dist/bench/cuda-decode.js --policies dense,specache --profile 2>&1 | tail -60 > "$OUT/cuda-decode-specache.log" ;;
    decode-quick) node dist/bench/cuda-decode.js --profile --context 16384 --steps 4 --warmup 1 --exact-steps 1 2>&1 | tail -60 > "$OUT/cuda-decode-quick.log" ;;
    engine) # through createEngine/generate (prefill included): about 4 minutes; the 131k specache run takes 6 more
      k="node dist/src/cli/main.js bench --shape llama-3.1-8b --backend cuda --steps 16 --json --context 32768"
      $k --policies dense --vram-budget none > "$OUT/engine-32k-dense.json" 2> "$OUT/engine.err"
      $k --policies specache,tiered,exact --vram-budget 10% > "$OUT/engine-32k.json" 2>> "$OUT/engine.err" ;;
    batch-24k) # issue #7's batched throughput: batch 8 under 1.6 GiB of KV against dense at the largest batch the GPU holds
      k="node dist/src/cli/main.js bench --shape llama-3.1-8b --backend cuda --steps 16 --json --context 24576"
      $k --policies infinigen,specache --batch 8 --vram-budget 1.6GiB > "$OUT/batch-24k-offload.json" 2> "$OUT/batch-24k.err"
      $k --policies dense --batch ${DENSE_BATCHES:-21,22} --vram-budget none > "$OUT/batch-24k-dense.json" 2>> "$OUT/batch-24k.err" ;;
    batch-kernels) # the batch step's GPU and host time: one launch a kernel for the batch against a launch a sequence
      k="node dist/bench/cuda-batch.js --context 24576"
      { $k --policies dense,infinigen --batch 8; $k --policies dense,infinigen --batch 8 --per-sequence
        $k --policies dense --batch ${DENSE_BATCH:-20}; } > "$OUT/cuda-batch.log" 2>&1 ;;
    prefill) node dist/bench/cuda-prefill.js > "$OUT/cuda-prefill.log" 2>&1 ;;
    lowbit) # the tail attention staged (the default) and straight from the section, in one run
      { echo "== KVOFF_ATTEND_STAGED=0 (one chunk a block, unstaged)"; KVOFF_ATTEND_STAGED=0 node dist/bench/cuda-lowbit.js
        echo "== default (staged, blocks walk chunks)"; node dist/bench/cuda-lowbit.js; } > "$OUT/cuda-lowbit.log" 2>&1 ;;
    engine-131k-*) # one policy at 131000 tokens of context (the 131072 limit, less the steps): a prefill, then 16 steps
      p=${what#engine-131k-}; b=10%; [ "$p" = dense ] && b=none
      node dist/src/cli/main.js bench --shape llama-3.1-8b --backend cuda --steps 16 --json --context 131000 \
        --policies "$p" --vram-budget $b > "$OUT/engine-131k-$p.json" 2> "$OUT/engine-131k-$p.err" ;;
    pool) # the CPU worker pool's read rate on the host: 512 MiB layers, 8 and 16 threads, one shard a thread against 'auto'
      node dist/bench/pool-scaling.js --sizes 512 --layers 1,4 --threads 8,16 --pin true --reps 7 > "$OUT/pool-scaling.log" 2>&1 ;;
    tune-131k) # the tuning check: the 8B shape at 131000 tokens under 1.6 GiB of KV, 3 settings confirmed
      node dist/src/cli/main.js tune --shape llama-3.1-8b --backend cuda --context 131000 --vram-budget 1.6GiB \
        --out "$OUT/tuned-8b-131k.json" > "$OUT/tune-131k.log" 2>&1 ;;
    *) echo "unknown step $what" >> "$OUT/errors.log" ;;
  esac
done
ls -la "$OUT"
