// The page-locking limit (RLIMIT_MEMLOCK) and whether locking a test buffer really works, the way host arenas lock theirs.
import { readFileSync } from 'node:fs';
import { native } from '../native.js';
import { formatBytes } from '../units.js';
import type { Finding } from './finding.js';

export type Limit = number | 'unlimited';

export interface MemlockLimit {
  soft: Limit; // bytes
  hard: Limit;
}

export interface PinTest {
  bytes: number;
  method: 'cudaHostRegister' | 'mlock' | 'pageable';
  pinned: boolean;
  reason: string | null; // why it fell back to pageable memory; null when pinned
}

export interface PinnedReport {
  memlock: Finding<MemlockLimit>;
  test: PinTest;
  note: string | null; // how the limit and the test relate, when that is not obvious
}

/** The "Max locked memory" row of /proc/self/limits text; null when the text has none. */
export function parseMemlock(limitsText: string): MemlockLimit | null {
  // Columns: soft limit, hard limit, units ("bytes").
  const m = /^Max locked memory\s+(\S+)\s+(\S+)/m.exec(limitsText);
  if (!m) return null;
  const one = (v: string): Limit | null => (v === 'unlimited' ? 'unlimited' : /^\d+$/.test(v) ? Number(v) : null);
  const soft = one(m[1]), hard = one(m[2]);
  return soft === null || hard === null ? null : { soft, hard };
}

export function readMemlock(): Finding<MemlockLimit> {
  if (process.platform !== 'linux') return { ok: false, reason: `not read: /proc/self/limits exists on Linux only (this is ${process.platform})` };
  let text: string;
  try {
    text = readFileSync('/proc/self/limits', 'utf8');
  } catch (err) {
    return { ok: false, reason: `not read: /proc/self/limits could not be opened (${(err as Error).message})` };
  }
  const limit = parseMemlock(text);
  return limit ? { ok: true, ...limit } : { ok: false, reason: 'not read: /proc/self/limits has no "Max locked memory" row' };
}

/**
 * Creates and frees one host arena with pinning asked for: the same path (cudaHostRegister when a GPU
 * is usable, else mlock, else pageable) that the KV host tier takes, so the answer is the one it would get.
 */
export function pinTest(bytes: number): PinTest {
  const r = native().arenaCreate({ bytes, pin: true });
  native().arenaFree({ handle: r.handle });
  // The arena's warning is a full sentence for stderr; the cause alone reads better in a report.
  const reason = r.pinned ? null : (r.warning?.split('Cause: ')[1] ?? r.warning ?? 'pinning was not attempted');
  return { bytes: r.bytes, method: r.method, pinned: r.pinned, reason };
}

/** Whether CAP_IPC_LOCK (bit 14 of CapEff in /proc/self/status) is effective: then mlock ignores RLIMIT_MEMLOCK. Null when unknown. */
export function parseCapIpcLock(statusText: string): boolean | null {
  const m = /^CapEff:\s*([0-9a-f]+)$/im.exec(statusText);
  return m ? (BigInt(`0x${m[1]}`) & (1n << 14n)) !== 0n : null;
}

function readCapIpcLock(): boolean | null {
  try {
    return parseCapIpcLock(readFileSync('/proc/self/status', 'utf8'));
  } catch {
    return null;
  }
}

/** Reads the limit against the test and the process's privilege: whether the limit will cap the host KV tier. */
export function pinNote(memlock: Finding<MemlockLimit>, test: PinTest, capIpcLock: boolean | null): string | null {
  if (test.method === 'cudaHostRegister') return 'cudaHostRegister pins through the NVIDIA driver; RLIMIT_MEMLOCK does not cap it';
  if (!memlock.ok || memlock.soft === 'unlimited') return null;
  if (capIpcLock) return 'this process has CAP_IPC_LOCK (e.g. root), so RLIMIT_MEMLOCK does not cap mlock';
  if (test.method === 'mlock')
    return `without a GPU, host KV arenas past ${formatBytes(memlock.soft)} in all will be pageable; raise the limit with \`ulimit -l unlimited\` or grant CAP_IPC_LOCK`;
  return null;
}

export function pinnedReport(testBytes: number): PinnedReport {
  const memlock = readMemlock();
  const test = pinTest(testBytes);
  return { memlock, test, note: pinNote(memlock, test, readCapIpcLock()) };
}
