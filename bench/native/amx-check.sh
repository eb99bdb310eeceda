#!/usr/bin/env bash
# Runs the attention tests' amx level on a CPU without AMX: builds the addon once more in a scratch directory with
# the tile instructions replaced by scalar stand-ins (native/src/simd/amx_emulate.h), then runs the given test files
# (default test/kernels-attention.test.ts) against it. Needs AVX-512 with BF16 (the path's own vector code), npm
# install and npm run build first, and about 5 minutes on 2 cores. A check of the AMX code's logic, not of its speed
# or of the tile unit's rounding.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
work=${AMX_CHECK_DIR:-$(mktemp -d)}
mkdir -p "$work"
rm -rf "$work/native" && cp -r binding.gyp package.json native "$work/"
ln -sfn "$root/node_modules" "$work/node_modules"
gyp=$(dirname "$(readlink -f "$(command -v npm)")")/../node_modules/node-gyp/bin/node-gyp.js
nodedir=$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")
(cd "$work" && CXXFLAGS=-DKVOFF_AMX_EMULATE node "$gyp" rebuild -j "$(nproc)" --nodedir="$nodedir" > build.log 2>&1) ||
  { tail -20 "$work/build.log"; exit 1; }
KVOFF_ADDON="$work/build/Release/kvoff.node" node -e "
import('./dist/src/native.js').then((m) => {
  const levels = m.native().buildInfo().simdLevels;
  if (!levels.includes('amx')) { console.error('amx level not offered: this CPU lacks AVX-512 BF16'); process.exit(1); }
});"
KVOFF_ADDON="$work/build/Release/kvoff.node" npx vitest run "${@:-test/kernels-attention.test.ts}"
