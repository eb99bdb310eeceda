// Worker-pool read rate against KV size, layer count, page locking and thread count: what tune's CPU rate depends on.
// Usage: npm run build && node dist/bench/pool-scaling.js [--sizes 128,512] [--layers 1,8] [--threads 8,16] [--spt 1,auto]
//        [--reps 5] [--pin true,false]
import { availableParallelism } from 'node:os';
import { performance } from 'node:perf_hooks';
import { HostArena } from '../src/arena.js';
import { CpuAttentionPool } from '../src/cpu-attention.js';
import { blockBytes, unitBytes } from '../src/kernels/paged-kv.js';
import type { KvRegion } from '../src/native.js';

const H = 8; // Llama-3.1-8B's layer: 8 KV heads x head_dim 128, GQA 4, bf16
const D = 128;
const G = 4;
const BLOCK = 16;
const UNIT = unitBytes(D); // K and V of one (token, head), bf16

function strings(name: string, fallback: string[]): string[] {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1]!.split(',') : fallback;
}
const list = (name: string, fallback: number[]): number[] => strings(name, fallback.map(String)).map(Number);
const SIZES_MIB = list('--sizes', [128, 512]);
const LAYERS = list('--layers', [1, 8]);
const THREADS = list('--threads', [...new Set([8, availableParallelism()])]);
const REPS = list('--reps', [5])[0]!;
const SPT = strings('--spt', ['1', 'auto']).map((x) => (x === 'auto' ? 'auto' : Number(x)));
const PIN = strings('--pin', ['true', 'false']).map((x) => x === 'true');

interface Layer {
  arena: HostArena;
  region: KvRegion;
  blockIds: Int32Array;
  tokens: number;
}

/** One layer's arena of `mib` MiB, filled with small finite bf16 values (as tune's synthetic KV). */
function makeLayer(mib: number, pin: boolean): Layer {
  const block = blockBytes({ numKvHeads: H, blockSize: BLOCK, headDim: D });
  const numBlocks = Math.floor((mib << 20) / block);
  const arena = new HostArena(numBlocks * block, { pin });
  arena.write(0, new Uint8Array(arena.bytes).fill(0x3c));
  const region: KvRegion = { handle: arena.handle, offset: 0, numBlocks, numKvHeads: H, headDim: D, blockSize: BLOCK, dtype: 'bf16' };
  return { arena, region, blockIds: Int32Array.from({ length: numBlocks }, (_, i) => i), tokens: numBlocks * BLOCK };
}

async function rate(pool: CpuAttentionPool, layers: Layer[]): Promise<{ median: number; min: number; max: number }> {
  const q = new Float32Array(H * G * D).fill(0.01); // [H, G, D]
  const out = new Float32Array(q.length);
  const lse = new Float32Array(H * G);
  const kvHeads = Int32Array.from({ length: H }, (_, h) => h);
  const gbs: number[] = [];
  for (let rep = -1; rep < REPS; rep++) {
    // One "step": every layer once, in order, as a decode step reads them.
    const t = performance.now();
    for (const l of layers) await pool.attend({ region: l.region, blockIds: l.blockIds, numTokens: l.tokens, kvHeads, groupSize: G, q, scale: 1 / Math.sqrt(D), out, lse });
    const ms = performance.now() - t;
    if (rep >= 0) gbs.push((layers.reduce((s, l) => s + l.tokens, 0) * H * UNIT) / ms / 1e6);
  }
  gbs.sort((a, b) => a - b);
  return { median: gbs[Math.floor(gbs.length / 2)]!, min: gbs[0]!, max: gbs[gbs.length - 1]! };
}

async function main(): Promise<void> {
  console.log(`worker pool over ${H} KV heads x head_dim ${D}, GQA ${G}, bf16; ${REPS} timed steps after one warm-up`);
  console.log('MiB/layer  layers  pinned  threads  shards/thread  GB/s median  (min..max)');
  for (const pin of PIN) {
    for (const mib of SIZES_MIB) {
      for (const n of LAYERS) {
        const layers = Array.from({ length: n }, () => makeLayer(mib, pin));
        try {
          for (const threads of THREADS) {
            for (const spt of SPT) {
              const pool = new CpuAttentionPool({ threads, shardsPerThread: spt });
              try {
                const r = await rate(pool, layers);
                const cols = [String(mib).padStart(9), String(n).padStart(6), String(pin).padStart(6), String(threads).padStart(7), String(spt).padStart(13)];
                console.log(`${cols.join('  ')}  ${r.median.toFixed(1).padStart(11)}  (${r.min.toFixed(1)}..${r.max.toFixed(1)})`);
              } finally {
                await pool.dispose();
              }
            }
          }
        } finally {
          for (const l of layers) l.arena.dispose();
        }
      }
    }
  }
}

await main();
