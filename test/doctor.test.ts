// `kvoff doctor`: the report's shape on this machine, the words for each missing piece, and the CLI's flags and errors. Never timings.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { KvoffArgumentError, KvoffRangeError } from '../src/errors.js';
import { parseCpuinfo } from '../src/hardware/cpu-features.js';
import { doctor, pickBackend } from '../src/hardware/doctor.js';
import { cudaVersionString, explainGpu, parseNvidiaModuleVersion } from '../src/hardware/gpu.js';
import { threadCounts } from '../src/hardware/memcpy-threads.js';
import { parseCapIpcLock, parseMemlock, pinNote } from '../src/hardware/pinned-memory.js';
import { KvoffBackendError } from '../src/model/model.js';
import { native, type BuildInfo } from '../src/native.js';

const run = promisify(execFile);
const CLI = join(import.meta.dirname, '..', 'dist', 'src', 'cli', 'main.js');
const gpuUsable = native().buildInfo().cuda.deviceCount > 0;

async function kvoff(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, [CLI, ...args], { timeout: 60_000 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

const cuda = (o: Partial<BuildInfo['cuda']>): BuildInfo['cuda'] => ({ built: true, deviceCount: 0, driverVersion: 0, runtimeVersion: 13000, deviceName: '', reason: '', ...o });

describe('doctor report', () => {
  it('has every section, with numbers or reasons, on this machine', async () => {
    const r = await doctor({ quick: true });
    expect(Object.keys(r)).toEqual(['backend', 'gpu', 'transfer', 'pinned', 'memcpy', 'cpu']);
    expect(r.backend.asked).toBe('auto');
    if (gpuUsable) {
      expect(r.backend.picked).toBe('cuda');
      expect(r.gpu.reason).toBeNull();
      expect(r.transfer.ok).toBe(true);
    } else {
      expect(r.backend.picked).toBe('cpu');
      expect(r.gpu.usable).toBe(false);
      expect(r.gpu.reason).toMatch(/\w{5,}/); // words, not a code
      expect(r.gpu.memory).toEqual({ ok: false, reason: expect.any(String) });
      expect(r.transfer).toEqual({ ok: false, reason: expect.stringContaining('not measured') });
    }
    if (process.platform === 'linux') {
      expect(r.pinned.memlock.ok).toBe(true);
      if (r.pinned.memlock.ok) for (const l of [r.pinned.memlock.soft, r.pinned.memlock.hard]) expect(l === 'unlimited' || (Number.isSafeInteger(l) && l >= 0)).toBe(true);
    }
    expect(['cudaHostRegister', 'mlock', 'pageable']).toContain(r.pinned.test.method);
    if (r.pinned.test.pinned) expect(r.pinned.test.reason).toBeNull();
    else expect(r.pinned.test.reason).toEqual(expect.any(String));
    expect(r.memcpy.rows.map((m) => m.threads)).toEqual(threadCounts(r.cpu.cores));
    for (const m of r.memcpy.rows) {
      expect(m.gbPerS).toBeGreaterThan(0);
      expect(m.readWriteGbPerS).toBeCloseTo(2 * m.gbPerS);
      expect(m.bytes).toBeGreaterThan(0);
    }
    expect(r.cpu.cores).toBeGreaterThan(0);
    for (const f of ['avx2', 'fma', 'f16c', 'avx512f', 'avx512bw', 'amx-tile', 'amx-bf16'] as const) expect(typeof r.cpu.features[f]).toBe('boolean');
    expect(['scalar', 'avx2', 'avx512', 'amx']).toContain(r.cpu.simd);
  });

  it('--backend cuda without a usable GPU is an error that says why; cpu is always allowed', async () => {
    expect(pickBackend('cpu', { usable: true, name: 'X', reason: null }).picked).toBe('cpu');
    expect(pickBackend('auto', { usable: true, name: 'NVIDIA H100', reason: null })).toMatchObject({ picked: 'cuda', why: expect.stringContaining('H100') });
    expect(pickBackend('auto', { usable: false, name: null, reason: 'no NVIDIA driver' }).picked).toBe('cpu');
    expect(() => pickBackend('cuda', { usable: false, name: null, reason: 'no NVIDIA driver' })).toThrow(KvoffBackendError);
    expect(() => pickBackend('cuda', { usable: false, name: null, reason: 'no NVIDIA driver' })).toThrow(/--backend.*"cuda": no NVIDIA driver/);
    if (!gpuUsable) await expect(doctor({ backend: 'cuda', quick: true })).rejects.toThrow(KvoffBackendError);
  });
});

describe('doctor words for each missing piece', () => {
  it('CUDA not built, with or without a driver loaded', () => {
    const notBuilt = cuda({ built: false, runtimeVersion: 0 });
    expect(explainGpu(notBuilt, null)).toMatch(/^CUDA not built: nvcc was not found at install time/);
    expect(explainGpu(notBuilt, '550.54.15')).toMatch(/although the NVIDIA driver 550\.54\.15 is loaded/);
  });

  it('no driver, a kernel module without libcuda, a driver older than the runtime, and a usable GPU', () => {
    expect(explainGpu(cuda({}), null)).toMatch(/^no NVIDIA driver/);
    expect(explainGpu(cuda({}), '570.86.10')).toMatch(/570\.86\.10 is loaded, but its CUDA library \(libcuda\.so\.1\) could not be loaded/);
    expect(explainGpu(cuda({ driverVersion: 12020, reason: 'driver found, but no usable GPU: x' }), '535.1')).toMatch(/supports CUDA 12\.2.*runtime is 13\.0.*update the NVIDIA driver/);
    expect(explainGpu(cuda({ driverVersion: 13000, reason: 'driver found, but it reports 0 GPUs' }), '580.1')).toBe('driver found, but it reports 0 GPUs');
    expect(explainGpu(cuda({ driverVersion: 13000, deviceCount: 1, deviceName: 'NVIDIA H100' }), '580.1')).toBeNull();
  });

  it('parses versions, /proc/self/limits, /proc/self/status and /proc/cpuinfo', () => {
    expect(cudaVersionString(13000)).toBe('13.0');
    expect(cudaVersionString(12040)).toBe('12.4');
    expect(cudaVersionString(0)).toBeNull();
    expect(parseNvidiaModuleVersion('NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.129.03  Thu Oct 19 18:56:32 UTC 2023')).toBe('535.129.03');
    expect(parseNvidiaModuleVersion('NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.10  Release Build')).toBe('570.86.10');
    const limits = 'Limit                     Soft Limit           Hard Limit           Units     \nMax locked memory         8388608              unlimited            bytes     \nMax file locks            unlimited            unlimited            locks     \n';
    expect(parseMemlock(limits)).toEqual({ soft: 8388608, hard: 'unlimited' });
    expect(parseMemlock('nothing here')).toBeNull();
    expect(parseCapIpcLock('Name:\tnode\nCapEff:\t000001fffeffffff\n')).toBe(true);
    expect(parseCapIpcLock('CapEff:\t0000000000000000\n')).toBe(false);
    expect(parseCapIpcLock('')).toBeNull();
    const info = parseCpuinfo('processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 f16c amx_tile\n\nprocessor\t: 1\nflags\t\t: fpu\n');
    expect(info?.model).toBe('Test CPU');
    expect([...info!.flags]).toEqual(['fpu', 'avx2', 'f16c', 'amx_tile']);
  });

  it('says when the memlock limit will cap pinning and when it does not bind', () => {
    const limit = { ok: true as const, soft: 8 << 20, hard: 8 << 20 };
    const mlock = { bytes: 1 << 20, method: 'mlock' as const, pinned: true, reason: null };
    expect(pinNote(limit, mlock, false)).toMatch(/past 8\.00 MiB .* pageable; raise the limit with `ulimit -l unlimited`/);
    expect(pinNote(limit, mlock, true)).toMatch(/CAP_IPC_LOCK/);
    expect(pinNote({ ok: true, soft: 'unlimited', hard: 'unlimited' }, mlock, false)).toBeNull();
    expect(pinNote(limit, { ...mlock, method: 'cudaHostRegister' }, false)).toMatch(/does not cap/);
  });

  it('measures 1, 2, 4, ... threads up to the core count', () => {
    expect(threadCounts(1)).toEqual([1]);
    expect(threadCounts(2)).toEqual([1, 2]);
    expect(threadCounts(6)).toEqual([1, 2, 4, 6]);
    expect(threadCounts(16)).toEqual([1, 2, 4, 8, 16]);
  });
});

describe('doctor native entry points', () => {
  it('check their options like every other entry point', async () => {
    expect(() => native().cudaBandwidth({ bytes: 1 })).toThrow('Expected cudaBandwidth.bytes in [4096, 68719476736] but received 1');
    expect(() => native().cudaBandwidth({ bytes: 1 << 20, iterations: 'x' as unknown as number })).toThrow(KvoffArgumentError);
    expect(() => native().cudaMemInfo({ device: -1 })).toThrow(KvoffRangeError);
    expect(() => native().hostMemcpyBandwidth({ bytes: 1 << 20, threads: 0 })).toThrow('Expected hostMemcpyBandwidth.threads in [1, 1024] but received 0');
    expect(() => native().hostMemcpyBandwidth({ bytes: 100, threads: 1 })).toThrow(KvoffRangeError);
  });

  it('measure one thread\'s FMA rate at every SIMD level, and check seconds', () => {
    expect(() => native().fmaRate({ seconds: 0 })).toThrow('Expected a number of seconds in (0, 10] for fmaRate.seconds but received 0');
    expect(() => native().fmaRate({ seconds: 11 })).toThrow(KvoffArgumentError);
    expect(() => native().fmaRate({ seconds: 'x' as unknown as number })).toThrow('Expected a finite number for fmaRate.seconds but received "x"');
    const initial = native().buildInfo().simd;
    try {
      for (const level of native().buildInfo().simdLevels) {
        native().setSimd({ level });
        const r = native().fmaRate({ seconds: 0.02 });
        expect(r.level).toBe(level);
        expect(r.fmaPerSecond).toBeGreaterThan(0);
        // Each chain a -> 0.999a + 0.001 settles at 1, so the sum is the chain count x lanes (12, 12 x 8, 16 x 16):
        // the chains ran, and stayed finite.
        expect([12, 96, 256].some((n) => Math.abs(r.checksum - n) < 1e-3 * n), `${level} checksum ${r.checksum}`).toBe(true);
      }
    } finally {
      native().setSimd({ level: initial });
    }
  });

  it('report "cannot measure" as a finding without a GPU, and measure host memcpy with any thread count', async () => {
    const mem = native().cudaMemInfo();
    const bw = await native().cudaBandwidth({ bytes: 1 << 20, iterations: 1 });
    if (!gpuUsable) {
      expect(mem).toMatchObject({ ok: false, freeBytes: 0, totalBytes: 0, reason: native().buildInfo().cuda.reason });
      expect(bw).toMatchObject({ ok: false, h2dGbPerS: 0, d2hGbPerS: 0, reason: native().buildInfo().cuda.reason });
    }
    const m = await native().hostMemcpyBandwidth({ bytes: (3 << 20) + 100, threads: 3, iterations: 2 });
    expect(m.threads).toBe(3);
    expect(m.bytes % (3 * 64)).toBe(0); // whole cache lines per thread
    expect(m.gbPerS).toBeGreaterThan(0);
  });
});

describe('kvoff doctor (built CLI)', () => {
  it('--json prints one JSON object with the report', async () => {
    const r = await kvoff(['doctor', '--json', '--quick']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(Object.keys(j)).toEqual(['backend', 'gpu', 'transfer', 'pinned', 'memcpy', 'cpu']);
    expect(j.backend.picked).toBe(gpuUsable ? 'cuda' : 'cpu');
    expect(j.memcpy.rows.length).toBeGreaterThan(0);
  });

  it('prints text by default, and --help describes the flags', async () => {
    const r = await kvoff(['doctor', '--quick', '--backend', 'cpu']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^backend +cpu \(asked for with --backend cpu\)/);
    for (const label of ['GPU', 'driver', 'runtime', 'memory', 'link', 'pinned', 'memcpy', 'CPU']) expect(r.stdout).toMatch(new RegExp(`^ *${label} `, 'm'));
    const h = await kvoff(['doctor', '--help']);
    expect(h.code).toBe(0);
    expect(h.stdout).toMatch(/--backend/);
    expect(h.stdout).toMatch(/--json/);
  });

  it('a bad --backend exits non-zero naming the flag', async () => {
    const r = await kvoff(['doctor', '--backend', 'tpu']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/--backend/);
    expect(r.stderr).toMatch(/tpu/);
    expect(r.stdout).toBe('');
  });

  it.skipIf(gpuUsable)('--backend cuda without a GPU exits non-zero and says why', async () => {
    const r = await kvoff(['doctor', '--backend', 'cuda', '--quick']);
    expect(r.code).not.toBe(0);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^kvoff: Expected a usable backend for --backend but received "cuda": (no NVIDIA driver|CUDA not built|driver found|the NVIDIA driver)/);
  });
});
