// Byte sizes as users write them ("2GiB", "160KiB", "1.5GB", 4096) and back.
import { KvoffArgumentError } from './errors.js';

const UNITS: Record<string, number> = {
  b: 1, '': 1,
  kb: 1e3, mb: 1e6, gb: 1e9, tb: 1e12,
  kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30, tib: 2 ** 40,
  k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40,
};

/** Parses a byte count; `field` names the flag or option in the error. */
export function parseBytes(value: unknown, field: string): number {
  const expected = 'a byte size such as 4096, "160KiB", "2GiB" or "1.5GB"';
  if (typeof value === 'number') {
    if (Number.isSafeInteger(value) && value >= 0) return value;
    throw new KvoffArgumentError(field, expected, value);
  }
  if (typeof value !== 'string') throw new KvoffArgumentError(field, expected, value);
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value);
  const unit = m ? UNITS[m[2].toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new KvoffArgumentError(field, expected, value);
  const bytes = Math.floor(Number(m[1]) * unit);
  if (!Number.isSafeInteger(bytes)) throw new KvoffArgumentError(field, expected, value);
  return bytes;
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let x = n;
  while (x >= 1024 && i < units.length - 1) {
    x /= 1024;
    i++;
  }
  return `${i === 0 ? x : x.toFixed(x < 10 ? 2 : 1)} ${units[i]}`;
}
