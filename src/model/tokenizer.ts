// Thin wrapper over @huggingface/tokenizers: text <-> Int32Array token ids, with typed errors.
import { Tokenizer } from '@huggingface/tokenizers';
import { KvoffArgumentError, KvoffRangeError, describe } from '../errors.js';
import { KvoffModelFormatError } from './errors.js';

// The package's .d.ts files use extensionless relative imports, which NodeNext cannot follow, so
// its types arrive as `any`; this is the slice of its API kvoff relies on (checked against 0.2.0).
interface HfTokenizer {
  encode(text: string, options?: { add_special_tokens?: boolean }): { ids: number[] };
  decode(ids: number[], options?: { skip_special_tokens?: boolean }): string;
  get_vocab(withAddedTokens?: boolean): Map<string, number>;
  token_to_id(token: string): number | undefined;
}

export interface KvoffTokenizer {
  /** Largest token id + 1, added tokens included. */
  readonly vocabSize: number;
  /** Special tokens (BOS, chat markers) are added only when asked: prompts are usually built by the caller. */
  encode(text: string, options?: { addSpecialTokens?: boolean }): Int32Array;
  decode(ids: ArrayLike<number>, options?: { skipSpecialTokens?: boolean }): string;
  tokenToId(token: string): number | undefined;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function loadTokenizer(tokenizerJson: unknown, tokenizerConfig: unknown | null, source = 'tokenizer.json'): KvoffTokenizer {
  if (!isPlainObject(tokenizerJson)) throw new KvoffModelFormatError(source, '', 'a JSON object', describe(tokenizerJson));
  if (tokenizerConfig != null && !isPlainObject(tokenizerConfig)) {
    throw new KvoffModelFormatError('tokenizer_config.json', '', 'a JSON object', describe(tokenizerConfig));
  }
  let tok: HfTokenizer;
  try {
    tok = new Tokenizer(tokenizerJson, tokenizerConfig ?? {}) as HfTokenizer;
  } catch (err) {
    throw new KvoffModelFormatError(source, '', 'a tokenizer @huggingface/tokenizers can load', (err as Error).message, { cause: err });
  }
  let vocabSize = 0;
  for (const id of tok.get_vocab(true).values()) vocabSize = Math.max(vocabSize, id + 1);

  return {
    vocabSize,
    encode(text, options = {}) {
      if (typeof text !== 'string') throw new KvoffArgumentError('text', 'a string', text);
      const { ids } = tok.encode(text, { add_special_tokens: options.addSpecialTokens ?? false });
      const out = new Int32Array(ids.length);
      for (let i = 0; i < ids.length; i++) {
        // A token missing from the vocab with no unk_token comes back undefined; 0 would be a silent lie.
        if (!Number.isInteger(ids[i])) throw new KvoffArgumentError('text', 'text the tokenizer can map to ids (it has no unk_token)', text);
        out[i] = ids[i];
      }
      return out;
    },
    decode(ids, options = {}) {
      if (ids.length === 0) return ''; // the library throws on an empty list
      const list = Array.from(ids);
      for (const id of list) {
        if (!Number.isInteger(id) || id < 0 || id >= vocabSize) throw new KvoffRangeError('token id', id, 0, vocabSize - 1);
      }
      return tok.decode(list, { skip_special_tokens: options.skipSpecialTokens ?? false });
    },
    tokenToId(token) {
      return tok.token_to_id(token);
    },
  };
}
