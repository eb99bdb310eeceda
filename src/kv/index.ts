// Paged host KV bookkeeping: block pool, per-sequence block tables, and the store tying them together.
export { BlockPool } from './block-pool.js';
export { BlockTable } from './block-table.js';
export { HostKvCache, kvBlockBytes, type HostKvShape } from './host-cache.js';
export { SequenceStore, type AppendResult, type SequenceStoreOptions } from './sequence-store.js';
