// Checks that tokenizer.json round-trips bytes through @huggingface/tokenizers:
// encode(text).ids == UTF-8 bytes of text, and decode(ids) == text.
// Usage (from the repo root, with @huggingface/tokenizers installed):
//   node src/demo-model/check_tokenizer.mjs [DIR]     (DIR defaults to this folder)
import { Tokenizer } from '@huggingface/tokenizers';
import { readFileSync } from 'node:fs';
const dir = process.argv[2] ?? new URL(".", import.meta.url).pathname;
const tj = JSON.parse(readFileSync(dir + '/tokenizer.json', 'utf8'));
const tc = JSON.parse(readFileSync(dir + '/tokenizer_config.json', 'utf8'));
const tok = new Tokenizer(tj, tc);
let fails = 0;
function check(text) {
  const ids = tok.encode(text).ids;
  const bytes = [...Buffer.from(text, 'utf8')];
  const same = ids.length === bytes.length && ids.every((v, i) => v === bytes[i]);
  const back = tok.decode(ids);
  if (!same || back !== text) { fails++; console.log('FAIL', JSON.stringify(text).slice(0, 80), ids.slice(0, 20), JSON.stringify(back).slice(0,80)); }
}
// all printable ASCII, controls, whitespace runs, cleanup-sensitive patterns
let all = ''; for (let b = 0; b < 128; b++) all += String.fromCharCode(b);
check(all);
check("Hello World");
check(" leading and trailing  ");
check("a . b ? c ! d , e ' f n't 's 've 're 'm");
check("The pass key is 12345\nWhat is the pass key? The pass key is ");
check("tabs\tand\r\nnewlines\n\n  ");
check("<bos> <s> </s> [CLS]");
check("héllo wörld ✓ 日本語 😀");
// random ASCII strings
let seed = 1; const rnd = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
for (let t = 0; t < 2000; t++) { let s = ''; const n = Math.floor(rnd() * 200); for (let i = 0; i < n; i++) s += String.fromCharCode(Math.floor(rnd() * 128)); if (s.length) check(s); }
// long text
const filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n";
const long = filler.repeat(400);
let t0 = performance.now(); check(long); console.log('long', long.length, 'chars', (performance.now() - t0).toFixed(1), 'ms');
// specials
console.log('bos', tok.token_to_id('<|bos|>'), 'eos', tok.token_to_id('<|eos|>'), 'pad', tok.token_to_id('<|pad|>'), 'res4', tok.token_to_id('<|reserved_4|>'));
console.log('decode specials', JSON.stringify(tok.decode([256, 72, 105, 10, 257])), JSON.stringify(tok.decode([256, 72, 105, 10, 257], { skip_special_tokens: true })));
console.log('encode with special text', tok.encode('<|bos|>Hi').ids);
console.log('id 10 ->', JSON.stringify(tok.id_to_token(10)), 'id 32 ->', JSON.stringify(tok.id_to_token(32)), 'vocab size', tok.get_vocab().size);
console.log('single bytes decode', [0, 9, 10, 32, 65, 127].map((i) => JSON.stringify(tok.decode([i]))).join(' '));
console.log(fails === 0 ? 'ROUNDTRIP OK' : `ROUNDTRIP FAILED ${fails}`);
process.exitCode = fails === 0 ? 0 : 1;
