// Quest's rules, free of memory plumbing: per-page key bounds as tokens arrive, and which tokens a decode step
// attends given each page's upper-bound score.
import { f16ToF32, f32ToF16 } from '../kernels/half.js';

/**
 * Folds the keys of positions [start, start + T) of one head into per-page min/max rows. k: [T, numKvHeads,
 * headDim]; open: [2, headDim] the min and max of the page holding `start` over its tokens before `start` (any
 * content when `start` begins a page), updated in place to that of the last page touched. Returns the rows of
 * pages firstPage.. that changed: [pages, 2 (min, max), headDim].
 */
export function foldPageBounds(
  k: Float32Array, numKvHeads: number, headDim: number, head: number, start: number, pageSize: number, open: Float32Array,
): { firstPage: number; rows: Float32Array } {
  const D = headDim;
  const T = k.length / (numKvHeads * D);
  const firstPage = Math.floor(start / pageSize);
  const pages = T === 0 ? 0 : Math.floor((start + T - 1) / pageSize) - firstPage + 1;
  const rows = new Float32Array(pages * 2 * D);
  for (let p = 0; p < pages; p++) {
    const lo = rows.subarray(p * 2 * D, p * 2 * D + D);
    const hi = rows.subarray(p * 2 * D + D, (p + 1) * 2 * D);
    const pageStart = (firstPage + p) * pageSize;
    if (p === 0 && start > pageStart) {
      lo.set(open.subarray(0, D));
      hi.set(open.subarray(D, 2 * D));
    } else {
      lo.fill(Infinity);
      hi.fill(-Infinity);
    }
    for (let pos = Math.max(start, pageStart); pos < Math.min(start + T, pageStart + pageSize); pos++) {
      const row = ((pos - start) * numKvHeads + head) * D;
      for (let i = 0; i < D; i++) {
        const x = k[row + i];
        if (x < lo[i]) lo[i] = x;
        if (x > hi[i]) hi[i] = x;
      }
    }
  }
  if (pages > 0) open.set(rows.subarray((pages - 1) * 2 * D));
  return { firstPage, rows };
}

export interface PageChoice {
  pageSize: number;
  pages: number; // pages chosen by bound, besides the recent ones
  recentPages: number; // the newest pages, always attended (the open page among them)
  sinks: number; // the first tokens, always attended
}

/**
 * The sorted positions of n tokens a decode step attends: the sinks, the `recentPages` newest pages, and the
 * `pages` older pages with the highest upper bound (bounds: [ceil(n / pageSize)]; ties to the older page).
 */
export function choosePages(bounds: Float32Array, n: number, c: PageChoice): Int32Array {
  const P = Math.ceil(n / c.pageSize);
  const older = Math.max(0, P - c.recentPages);
  const ranked = Array.from({ length: older }, (_, p) => p).sort((a, b) => bounds[b] - bounds[a] || a - b);
  const take = new Uint8Array(P); // [P] 1: every token of the page is attended
  for (let i = 0; i < Math.min(c.pages, older); i++) take[ranked[i]] = 1;
  for (let p = older; p < P; p++) take[p] = 1;
  const out: number[] = [];
  for (let pos = 0; pos < n; pos++) if (pos < c.sinks || take[Math.floor(pos / c.pageSize)]) out.push(pos);
  return Int32Array.from(out);
}

/** Slots per (layer, KV head) the chosen tokens can take, at most the sequence's capacity. */
export function questSlots(c: PageChoice, capacityTokens: number): number {
  return Math.min(capacityTokens, c.sinks + (c.pages + c.recentPages) * c.pageSize);
}

/** The fp16 value next below (dir -1) or above (dir +1) the fp16 `h`: one step along the number line. */
function stepHalf(h: number, dir: -1 | 1): number {
  if (h === 0x0000 || h === 0x8000) return dir > 0 ? 0x0001 : 0x8001; // either zero: to the smallest subnormal
  const negative = (h & 0x8000) !== 0;
  return negative === (dir > 0) ? h - 1 : h + 1; // away from zero on the side we move to, toward it otherwise
}

/**
 * Page rows [pages, 2 (min, max), D] as fp16 bits, each min rounded down and each max rounded up, so the stored
 * range still holds every key and the bound stays an upper bound (Quest's guarantee). Beyond fp16's range a
 * min becomes -inf and a max +inf (still bounds; pageBounds skips q_i = 0 so 0 * inf adds nothing).
 */
export function boundsToHalf(rows: Float32Array, D: number): Uint16Array {
  const out = new Uint16Array(rows.length);
  for (let i = 0; i < rows.length; i++) {
    const isMax = Math.floor(i / D) % 2 === 1;
    const x = rows[i];
    let h = f32ToF16(x);
    const back = f16ToF32(h);
    if (!isMax && back > x) h = stepHalf(h, -1);
    if (isMax && back < x) h = stepHalf(h, 1);
    out[i] = h;
  }
  return out;
}
