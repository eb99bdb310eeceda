// kvoff's public API: load a model, create an engine, stream tokens.
export { loadModel, Model, KvoffBackendError, type LoadModelOptions, type BackendName } from './model/model.js';
export { createEngine, Engine, type GenerateOptions, type GeneratedToken } from './engine/engine.js';
export { POLICIES, type EngineOptions } from './engine/options.js';
export type { EngineStats } from './engine/stats.js';
export * from './errors.js';
export { parseBytes, formatBytes } from './units.js';
// The device-resident CUDA decode step (whole step on the GPU, only token ids cross), for decode-speed work at long
// context: see README "CUDA backend" and bench/cuda-decode.ts.
export { ResidentDecoder } from './cuda/resident-decoder.js';
export { randomDeviceWeights } from './cuda/cuda-weights.js';
export { DenseResident, SpecacheResident, ExactResident, type HostKv, type SpecacheKnobs } from './cuda/resident-attention.js';
export { uploadWeights } from './cuda/cuda-weights.js';
export { copyToHost } from './cuda/resident-context.js';
