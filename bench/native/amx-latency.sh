#!/usr/bin/env bash
# Builds bench/native/amx-latency.cc (static, so it runs on a machine without a compiler) and runs it; BUILD_ONLY=1 only builds.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${LATENCY_OUT:-build/amx-latency}
mkdir -p "$(dirname "$out")"
g++ -O2 -std=c++17 -static bench/native/amx-latency.cc -o "$out"
[ "${BUILD_ONLY:-}" = 1 ] || "$out"
