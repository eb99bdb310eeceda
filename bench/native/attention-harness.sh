#!/usr/bin/env bash
# Builds bench/native/attention-harness.cc against the kernel sources (static, so the binary runs on a machine
# without a compiler) and runs it; environment variables pass through (ONLY, MB, BS, DT); XF adds compiler flags.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${HARNESS_OUT:-build/attention-harness}
mkdir -p "$(dirname "$out")"
obj=$(mktemp -d)
F="${XF:-} -O3 -std=c++17 -fno-strict-aliasing -ffp-contract=off -Inative/src"  # as binding.gyp
g++ $F -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c -mavx2 -c native/src/simd/kernels_avx512.cc -o "$obj/k512.o"
g++ $F -mavx2 -mfma -mf16c -c native/src/simd/kernels_avx2.cc -o "$obj/k2.o"
g++ $F -c native/src/simd/kernels_scalar.cc -o "$obj/ks.o"
g++ $F -c native/src/simd/dispatch.cc -o "$obj/disp.o"
g++ $F -c bench/native/attention-harness.cc -o "$obj/h.o"
g++ -static "$obj"/h.o "$obj"/k512.o "$obj"/k2.o "$obj"/ks.o "$obj"/disp.o -o "$out" -lpthread
rm -rf "$obj"
[ "${BUILD_ONLY:-}" = 1 ] || "$out"
