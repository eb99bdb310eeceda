// --config FILE: a versioned JSON of engine settings (what `kvoff tune` writes), validated with zod.
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { KvoffArgumentError } from '../errors.js';
import { EngineOptionsSchema, zodToKvoff, type EngineOptions } from '../engine/options.js';
import { TuneSectionSchema } from '../tune/record.js';

export const TunedConfigSchema = z
  .object({
    version: z.literal(1),
    engine: EngineOptionsSchema.partial(),
    tune: TuneSectionSchema.optional(), // what `kvoff tune` measured and predicted; checked so a damaged file is refused
  })
  .passthrough(); // room for other tools' sections beside `engine`

export function readConfigFile(path: string): EngineOptions {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new KvoffArgumentError('--config', 'a readable JSON file', `${path} (${(err as NodeJS.ErrnoException).code ?? 'unreadable'})`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new KvoffArgumentError('--config', 'valid JSON', `${path}: ${(err as Error).message}`);
  }
  const r = TunedConfigSchema.safeParse(json);
  if (!r.success) throw zodToKvoff(r.error, `--config ${path}`, json);
  return r.data.engine as EngineOptions;
}
