// Random-weight model directories: every known shape parses, bf16 weights load (sharded through an index), sizes add up.
import { rm } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseModelConfig } from '../src/model/config.js';
import { loadModelDir } from '../src/model/load-dir.js';
import { parameterCount, writeRandomModel } from '../src/model/random-model.js';
import { SHAPE_NAMES, shapeConfig } from '../src/model/shapes.js';
import { toFloat32 } from '../src/model/tensor.js';

describe('model shapes', () => {
  it('parse, with the parameter counts of the real models', () => {
    const billions = Object.fromEntries(SHAPE_NAMES.map((n) => [n, parameterCount(parseModelConfig(shapeConfig(n), n)) / 1e9]));
    expect(billions['llama-3.2-1b']).toBeCloseTo(1.236, 3); // tied embeddings
    expect(billions['llama-3.1-8b']).toBeCloseTo(8.030, 3);
    expect(billions['qwen2.5-7b']).toBeCloseTo(7.616, 3); // with q/k/v biases
    const qwen = parseModelConfig(shapeConfig('qwen2.5-7b'), 'qwen');
    expect(qwen).toMatchObject({ attentionBias: true, headDim: 128, numKvHeads: 4 });
    expect(parseModelConfig(shapeConfig('llama-3.1-8b'), '8b').ropeScaling).toMatchObject({ type: 'llama3', factor: 8 });
  });

  it('an unknown name lists the known ones', () => {
    expect(() => shapeConfig('gpt-5')).toThrow(/Expected one of llama-3\.2-1b, llama-3\.1-8b, qwen2\.5-7b, tiny for --shape but received "gpt-5"/);
  });
});

describe('writeRandomModel', () => {
  it('writes bf16 shards with an index that the loader reads back, values finite and near their scale', async () => {
    const json = { ...shapeConfig('tiny'), architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2' };
    const m = await writeRandomModel(json, { shardBytes: 64 << 10, seed: 7 });
    try {
      expect(existsSync(join(m.dir, 'model.safetensors.index.json'))).toBe(true);
      const index = JSON.parse(readFileSync(join(m.dir, 'model.safetensors.index.json'), 'utf8'));
      expect(index.metadata.total_size).toBe(m.bytes);
      expect(m.bytes).toBe(parameterCount(m.config) * 2);
      const loaded = await loadModelDir(m.dir);
      const q = toFloat32(loaded.weights.get('model.layers.0.self_attn.q_proj.weight')!);
      const norm = toFloat32(loaded.weights.get('model.norm.weight')!);
      expect(loaded.weights.get('model.layers.1.self_attn.k_proj.bias')?.dtype).toBe('bf16');
      let sq = 0;
      for (const x of q) sq += x * x;
      expect(Math.sqrt(sq / q.length)).toBeGreaterThan(0.5 / 8); // std 1/sqrt(64)
      expect(Math.sqrt(sq / q.length)).toBeLessThan(2 / 8);
      for (const x of norm) expect(Math.abs(x - 1)).toBeLessThan(0.2);
    } finally {
      await rm(m.dir, { recursive: true, force: true });
    }
  });

  it('is deterministic for a seed', async () => {
    const a = await writeRandomModel(shapeConfig('tiny'), { seed: 3 });
    const b = await writeRandomModel(shapeConfig('tiny'), { seed: 3 });
    try {
      expect(readFileSync(join(a.dir, 'model.safetensors')).equals(readFileSync(join(b.dir, 'model.safetensors')))).toBe(true);
    } finally {
      await rm(a.dir, { recursive: true, force: true });
      await rm(b.dir, { recursive: true, force: true });
    }
  });
});
