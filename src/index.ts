// kvoff's public API: load a model, create an engine, stream tokens.
export { loadModel, Model, KvoffBackendError, type LoadModelOptions, type BackendName } from './model/model.js';
export { createEngine, Engine, type GenerateOptions, type GeneratedToken } from './engine/engine.js';
export { POLICIES, type EngineOptions } from './engine/options.js';
export type { EngineStats } from './engine/stats.js';
export * from './errors.js';
export { parseBytes, formatBytes } from './units.js';
