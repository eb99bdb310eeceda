// The CUDA kernels' per-thread bodies run on the CPU (test/native/cuda-kernel-sim.cu): their index arithmetic is
// checked in CI, which has nvcc but no GPU. Skipped when nvcc is absent; the GPU tests in test/gpu check the real launches.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = join(import.meta.dirname, '..');
const nvcc = execFileSync(process.execPath, [join(root, 'native', 'find-nvcc.cjs')], { encoding: 'utf8' }).trim();

describe.skipIf(nvcc === '')('CUDA kernel bodies on the CPU', () => {
  it('gather and GEMV per-thread code reproduce memcpy and an fp64 dot product', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kvoff-sim-'));
    try {
      const exe = join(dir, 'sim');
      execFileSync(nvcc, ['-std=c++17', '-O1', `-I${join(root, 'native', 'src')}`, '-o', exe, join(root, 'test', 'native', 'cuda-kernel-sim.cu')], { stdio: 'pipe' });
      const out = execFileSync(exe, { encoding: 'utf8' });
      expect(out).toContain('ALL OK');
      expect(out).not.toMatch(/MISMATCH|BAD/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);
});
