// Prints the nvcc path (or, with --home, the CUDA root) for binding.gyp; empty when there is none,
// so the addon builds CPU-only. KVOFF_NO_CUDA=1 forces a CPU-only build.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
function findNvcc() {
  if (process.env.KVOFF_NO_CUDA === '1') return '';
  const candidates = [];
  if (process.env.CUDA_HOME) candidates.push(path.join(process.env.CUDA_HOME, 'bin', 'nvcc'));
  candidates.push('/usr/local/cuda/bin/nvcc');
  for (const dir of (process.env.PATH || '').split(path.delimiter)) if (dir) candidates.push(path.join(dir, 'nvcc'));
  for (const c of candidates) {
    try { fs.accessSync(c, fs.constants.X_OK); return fs.realpathSync(c); } catch { /* next */ }
  }
  return '';
}
const nvcc = findNvcc();
if (process.argv.includes('--home')) {
  process.stdout.write(nvcc ? path.dirname(path.dirname(nvcc)) : '');
} else {
  process.stdout.write(nvcc);
}
