// Engine counters (DESIGN.md §6): counts and totals, never rates.

export interface EngineStats {
  prefillTokens: number; // computed; a batch's shared prompt prefix is counted once
  sharedPrefixTokens: number; // prompt tokens a sequence took from another's blocks instead of computing
  decodeTokens: number;
  bytesH2D: number;
  bytesD2H: number;
  hotHits: number;
  hotMisses: number;
  specUsed: number;
  specWasted: number;
  cpuAttnMs: number;
  deviceMs: number;
  copyMs: number;
  overlapRatio: number;
  deviceBytes: number; // KV device tier in use now
  deviceBytesPeak: number;
  hostBytes: number;
  weightBytes: number;
}

export function emptyStats(weightBytes: number): EngineStats {
  return {
    prefillTokens: 0, sharedPrefixTokens: 0, decodeTokens: 0, bytesH2D: 0, bytesD2H: 0, hotHits: 0, hotMisses: 0, specUsed: 0, specWasted: 0,
    cpuAttnMs: 0, deviceMs: 0, copyMs: 0, overlapRatio: 0, deviceBytes: 0, deviceBytesPeak: 0, hostBytes: 0, weightBytes,
  };
}
