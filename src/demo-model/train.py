#!/usr/bin/env python3
"""Trains kvoff's embedded demo model: a byte-level Llama (~2.9M parameters) that retrieves
a passkey or a key's value from long contexts (DESIGN.md §5). Runs on the GPU machine.

Model: LlamaForCausalLM, 4 layers, hidden 256, 8 query heads and 2 KV heads (GQA) of
head_dim 32, SwiGLU 704, tied embeddings, vocab 264 (ids 0..255 = bytes, 256 <|bos|>,
257 <|eos|>, 258 <|pad|>, 259..263 reserved; see make_tokenizer.py). rope_theta 500000:
with head_dim 32 there are only 16 rotary frequencies; at 500000 the slowest ~half barely
turn over 8k positions (wavelength > 8k), so they carry content for matching keys at any
distance, while the fast ones still encode local order for copying multi-byte strings.
The Llama-3 value also lets the model extrapolate somewhat past its longest trained length.

Data: synthetic, generated on the fly and seeded. The exact prompt formats live in
tasks.json next to this file, which the TypeScript evaluator reads too:
  passkey : prefix + filler*k + "The pass key is 12345\n" + filler*(n-k)
            + "What is the pass key? The pass key is "            -> answer "12345\n"
  multikey: prefix + n lines "The value of key ab3x9 is q81zz\n"
            + "What is the value of key ab3x9? The value of key ab3x9 is " -> "q81zz\n"
Every prompt starts with <|bos|> (dropped in 10% of training rows so a bare prompt also works).
Loss: cross-entropy on the answer bytes, plus --lm-weight times the mean over the prompt.

Curriculum (DEVICE.md: starting at 512-4096 tokens stays at chance; 128-512 first works):
sequence lengths 192-512, then 512-1k, 1k-2k, 2k-4k, 4k-8k. A stage advances once the
teacher-forced exact-match of both tasks (== greedy accuracy) over its last 20 steps is
>= --advance-acc. 20% of steps replay shorter lengths. One length per step, rows padded on
the right after the answer (no attention mask, so SDPA takes its causal flash path).

CLI:
  python3 train.py --out OUT [--time-budget S] [--resume DIR] [--eval-only DIR] [--seed N]
Writes to OUT: config.json, model.safetensors (bf16), tokenizer.json, tokenizer_config.json,
eval.json, ckpt/state.pt (fp32 weights + curriculum), ckpt/optim.pt (AdamW moments, bf16).
--resume DIR continues from DIR/ckpt (or DIR itself); with only DIR/model.safetensors it
continues from those weights with a fresh optimizer. --eval-only DIR evaluates DIR's
model.safetensors and writes OUT/eval.json. --time-budget bounds the training loop only;
startup, evaluation and saving add about a minute.
"""
import argparse
import json
import os
import random
import struct
import sys
import time
from collections import deque

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_tokenizer  # noqa: E402  (stdlib only)

T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------- model shape (fixed)
MODEL = dict(
    vocab_size=make_tokenizer.VOCAB_SIZE,  # 264
    hidden_size=256,
    intermediate_size=704,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    hidden_act="silu",
    initializer_range=0.02,
    tie_word_embeddings=True,
    attention_bias=False,
    mlp_bias=False,
    bos_token_id=make_tokenizer.BOS_ID,
    eos_token_id=make_tokenizer.EOS_ID,
    pad_token_id=make_tokenizer.PAD_ID,
)
BOS, EOS, PAD = make_tokenizer.BOS_ID, make_tokenizer.EOS_ID, make_tokenizer.PAD_ID
STAGES = [(192, 512), (512, 1024), (1024, 2048), (2048, 4096), (4096, 8192)]
TASKS = ("passkey", "multikey")


# ---------------------------------------------------------------- tasks (shared format)
class Tasks:
    """Builds prompts exactly as tasks.json specifies; lengths in tokens == bytes."""

    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            self.spec = json.load(f)
        s = self.spec
        self.reserve = int(s["answer_reserve"])
        self.max_new = int(s["max_new_tokens"])
        self.nbos = 1 if s["tokens"]["prepend_bos"] else 0
        self.term = s["answer_terminator"]
        assert s["tokens"]["bos_id"] == BOS and s["tokens"]["eos_id"] == EOS and s["tokens"]["pad_id"] == PAD
        self.pk, self.mk = s["passkey"], s["multikey"]
        for t in (self.pk, self.mk):
            for k, v in t.items():
                if isinstance(v, str):
                    v.encode("ascii")  # lengths below count bytes as characters
        pk, mk = self.pk, self.mk
        self.pk_fixed = self.nbos + len(pk["prefix"]) + len(pk["needle"].replace("{value}", "x" * pk["value_len"])) + len(pk["question"])
        self.mk_pair_len = len(mk["pair"].replace("{key}", "k" * mk["key_len"]).replace("{value}", "v" * mk["value_len"]))
        self.mk_fixed = self.nbos + len(mk["prefix"]) + len(mk["question"].replace("{key}", "k" * mk["key_len"]))
        self.answer_len = {
            "passkey": len(pk["answer"].replace("{value}", "x" * pk["value_len"])),
            "multikey": len(mk["answer"].replace("{value}", "x" * mk["value_len"])),
        }
        assert max(self.answer_len.values()) <= self.reserve and self.max_new <= self.reserve

    def min_context(self, task):
        if task == "passkey":
            return self.pk_fixed + self.reserve
        return self.mk_fixed + self.mk_pair_len + self.reserve

    @staticmethod
    def _rand(rng, charset, n):
        return "".join(rng.choices(charset, k=n))

    def passkey(self, rng, ctx):
        t = self.pk
        value = self._rand(rng, t["value_charset"], t["value_len"])
        n = (ctx - self.reserve - self.pk_fixed) // len(t["filler"])
        if n < 0:
            raise ValueError(f"passkey needs a context of at least {self.min_context('passkey')}, got {ctx}")
        k = rng.randint(0, n)
        needle = t["needle"].replace("{value}", value)
        prompt = t["prefix"] + t["filler"] * k + needle + t["filler"] * (n - k) + t["question"]
        return prompt, value

    def multikey(self, rng, ctx):
        t = self.mk
        n = (ctx - self.reserve - self.mk_fixed) // self.mk_pair_len
        if n < 1:
            raise ValueError(f"multikey needs a context of at least {self.min_context('multikey')}, got {ctx}")
        keys, seen = [], set()
        while len(keys) < n:
            key = self._rand(rng, t["key_charset"], t["key_len"])
            if key not in seen:
                seen.add(key)
                keys.append(key)
        values = [self._rand(rng, t["value_charset"], t["value_len"]) for _ in range(n)]
        q = rng.randrange(n)
        pair = t["pair"]
        body = "".join(pair.replace("{key}", k).replace("{value}", v) for k, v in zip(keys, values))
        prompt = t["prefix"] + body + t["question"].replace("{key}", keys[q])
        return prompt, values[q]

    def sample(self, task, rng, ctx):
        prompt, value = self.passkey(rng, ctx) if task == "passkey" else self.multikey(rng, ctx)
        answer = (self.pk if task == "passkey" else self.mk)["answer"].replace("{value}", value)
        assert self.nbos + len(prompt) <= ctx - self.reserve
        return prompt, value, answer


# ---------------------------------------------------------------- safetensors (no deps)
_ST_DTYPES = None


def read_safetensors(path):
    import torch

    global _ST_DTYPES
    if _ST_DTYPES is None:
        _ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        buf = bytearray(raw[8 + n + a : 8 + n + b])
        out[name] = torch.frombuffer(buf, dtype=_ST_DTYPES[info["dtype"]]).reshape(info["shape"]) if b > a else torch.zeros(info["shape"], dtype=_ST_DTYPES[info["dtype"]])
    return out, header


# ---------------------------------------------------------------- model
def rope_theta_of(model):
    """The rope base the model really uses, read back from its inv_freq buffer."""
    for name, buf in model.named_buffers():
        if name.endswith("inv_freq") and buf.numel() > 1:
            # inv_freq[i] = theta ** (-2i / head_dim)
            return float(buf[1].double().cpu() ** (-MODEL["head_dim"] / 2.0))
    rp = getattr(model.config, "rope_parameters", None)
    if isinstance(rp, dict) and "rope_theta" in rp:
        return float(rp["rope_theta"])
    return float(getattr(model.config, "rope_theta", float("nan")))


def build_model(torch, device):
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    # transformers 4 takes rope_theta; 5 keeps it in rope_parameters (with a shim for the
    # old name that has had bugs). Try both; keep the first whose model really uses it.
    base = {k: v for k, v in MODEL.items() if k != "rope_theta"}
    theta = MODEL["rope_theta"]
    model, errors = None, []
    for extra in ({"rope_theta": theta}, {"rope_parameters": {"rope_type": "default", "rope_theta": theta}}):
        try:
            cfg = LlamaConfig(**base, **extra)
            try:
                cfg._attn_implementation = "sdpa"
            except Exception as e:  # the default is sdpa anyway where available
                errors.append(f"attn_implementation: {e}")
            torch.manual_seed(0)
            m = LlamaForCausalLM(cfg)
        except Exception as e:
            errors.append(f"{list(extra)}: {type(e).__name__}: {e}")
            continue
        got = rope_theta_of(m)
        if abs(got / theta - 1) < 1e-3:
            model = m
            break
        errors.append(f"{list(extra)}: model uses rope_theta {got}")
    if model is None:
        raise RuntimeError("could not build the Llama config with rope_theta 500000: " + "; ".join(errors))
    model = model.to(device)
    impl = getattr(model.config, "_attn_implementation", "?")
    if device.type == "cuda" and impl == "eager":
        log("WARNING: eager attention: 8k contexts will be slow and memory-hungry; expected sdpa")
    n = sum(p.numel() for p in model.parameters())
    log(f"transformers {transformers.__version__}, torch {torch.__version__}, attention {impl}, "
        f"rope_theta {rope_theta_of(model):.0f}, {n:,} parameters ({n * 2 / 1e6:.2f} MB in bf16)")
    for e in errors:
        log(f"note: {e}")
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    if not tied:
        raise RuntimeError("lm_head is not tied to embed_tokens; expected tie_word_embeddings to hold")
    return model


def load_weights(torch, model, path):
    sd, _ = read_safetensors(path)
    sd = {k: v.float() for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"weights in {path} do not fit the model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()


def forward_logits(model, x, last_only=False):
    h = model.model(input_ids=x, use_cache=False).last_hidden_state
    h = h[:, -1] if last_only else h[:, :-1]
    return model.lm_head(h)


# ---------------------------------------------------------------- batches
def make_batch(torch, tasks, rng, L, B, bos_drop):
    """B rows of exactly L tokens, alternating passkey/multikey, right-padded after the answer."""
    buf = bytearray(B * L)
    has_bos, p_end, a_end, task_of = [], [], [], []
    for i in range(B):
        task = TASKS[i % 2]
        prompt, _value, answer = tasks.sample(task, rng, L)
        bos = tasks.nbos == 1 and rng.random() >= bos_drop
        off = 1 if bos else 0
        data = (prompt + answer).encode("ascii")
        buf[i * L + off : i * L + off + len(data)] = data
        has_bos.append(bos)
        p_end.append(off + len(prompt))
        a_end.append(off + len(data))
        task_of.append(i % 2)
    ids = torch.frombuffer(buf, dtype=torch.uint8).view(B, L).to(torch.long)
    ids[torch.tensor(has_bos, dtype=torch.bool), 0] = BOS
    pos = torch.arange(L).unsqueeze(0)
    p_end = torch.tensor(p_end).unsqueeze(1)
    a_end = torch.tensor(a_end).unsqueeze(1)
    ids[pos >= a_end] = PAD
    ans = (pos >= p_end) & (pos < a_end)  # target tokens that are the answer
    lm = (pos >= 1) & (pos < p_end)  # target tokens inside the prompt
    return ids, ans, lm, torch.tensor(task_of)


# ---------------------------------------------------------------- evaluation
def evaluate(torch, model, tasks, contexts, trials, seed, device, amp, log_fn=log):
    model.eval()
    results = []
    term = tasks.term.encode("ascii")[0]
    with torch.no_grad():
        for task in TASKS:
            for ctx in contexts:
                if ctx < tasks.min_context(task):
                    continue
                rng = random.Random(f"kvoff-eval:{seed}:{task}:{ctx}")
                samples = [tasks.sample(task, rng, ctx) for _ in range(trials)]
                correct = 0
                # Prompts of one (task, ctx) all have the same length; group anyway.
                groups = {}
                for prompt, value, _ in samples:
                    groups.setdefault(len(prompt), []).append((prompt, value))
                t0 = time.time()
                for plen, items in groups.items():
                    rows = max(1, min(len(items), 262144 // (plen + 8)))
                    for c in range(0, len(items), rows):
                        chunk = items[c : c + rows]
                        prefix = [BOS] if tasks.nbos else []
                        x = torch.tensor([prefix + list(p.encode("ascii")) for p, _ in chunk], device=device)
                        gen = []
                        for _ in range(tasks.max_new):
                            with amp():
                                logits = forward_logits(model, x, last_only=True)
                            nxt = logits.float().argmax(-1)
                            gen.append(nxt)
                            x = torch.cat([x, nxt[:, None]], 1)
                        gen = torch.stack(gen, 1).tolist()
                        for (_, value), g in zip(chunk, gen):
                            out = bytearray()
                            for tok in g:
                                if tok == term or tok == EOS:
                                    break
                                out.append(tok if tok < 256 else 0)
                            correct += out == value.encode("ascii")
                acc = correct / trials
                results.append({"task": task, "context": ctx, "prompt_tokens": tasks.nbos + len(samples[0][0]),
                                "accuracy": acc, "correct": correct, "trials": trials})
                log_fn(f"eval {task:8s} ctx {ctx:5d}: {correct:3d}/{trials} = {acc:6.1%} ({time.time() - t0:.1f}s)")
    model.train()
    return results


def print_table(results, contexts):
    by = {(r["task"], r["context"]): r for r in results}
    lines = ["| context | passkey | multikey |", "|---|---|---|"]
    for c in contexts:
        cells = []
        for t in TASKS:
            r = by.get((t, c))
            cells.append(f"{r['accuracy']:.0%} ({r['correct']}/{r['trials']})" if r else "-")
        lines.append(f"| {c} | {cells[0]} | {cells[1]} |")
    print("\n".join(lines), flush=True)


# ---------------------------------------------------------------- checkpoints
def save_ckpt(torch, ckpt_dir, model, opt, state):
    """Two files under 16 MB each: fp32 weights + state, and AdamW moments in bf16."""
    os.makedirs(ckpt_dir, exist_ok=True)
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    tmp = os.path.join(ckpt_dir, "state.pt.tmp")
    torch.save({"model": sd, "state": state}, tmp)
    os.replace(tmp, os.path.join(ckpt_dir, "state.pt"))
    osd = opt.state_dict()
    # state_dict() hands out the live per-parameter dicts: build new ones, never edit them.
    osd["state"] = {
        i: {k: (v.detach().to("cpu", torch.bfloat16) if k in ("exp_avg", "exp_avg_sq")
                else v.detach().cpu().clone() if torch.is_tensor(v) else v)
            for k, v in st.items()}
        for i, st in osd["state"].items()
    }
    tmp = os.path.join(ckpt_dir, "optim.pt.tmp")
    torch.save({"optim": osd}, tmp)
    os.replace(tmp, os.path.join(ckpt_dir, "optim.pt"))


def torch_load(torch, path):
    try:  # our own files hold a Python RNG state and optimizer settings besides tensors
        return torch.load(path, map_location="cpu", weights_only=False)
    except TypeError:
        return torch.load(path, map_location="cpu")


def find_ckpt(d):
    for c in (os.path.join(d, "ckpt"), d):
        if os.path.isfile(os.path.join(c, "state.pt")):
            return c
    return None


# ---------------------------------------------------------------- saving the model
def save_model(torch, model, out_dir):
    import copy

    m16 = copy.deepcopy(model).to(torch.bfloat16)
    m16.config.use_cache = True
    try:
        m16.save_pretrained(out_dir, safe_serialization=True)
    except TypeError:
        m16.save_pretrained(out_dir)
    st = os.path.join(out_dir, "model.safetensors")
    if not os.path.isfile(st):
        raise RuntimeError(f"save_pretrained wrote no model.safetensors in {out_dir}: {sorted(os.listdir(out_dir))}")
    gc = os.path.join(out_dir, "generation_config.json")
    if os.path.isfile(gc):
        os.remove(gc)  # not needed by kvoff; $OUT returns at most 8 files
    # transformers 5 writes rope_theta only inside rope_parameters and the dtype as "dtype".
    # Add the older top-level names too, so loaders written for Llama 2/3 configs read it,
    # unless transformers itself then reads the file differently.
    cp = os.path.join(out_dir, "config.json")
    with open(cp) as f:
        original = f.read()
    cfg = json.loads(original)
    cfg.setdefault("rope_theta", MODEL["rope_theta"])
    cfg.setdefault("head_dim", MODEL["head_dim"])
    if "dtype" not in cfg and "torch_dtype" not in cfg:
        cfg["torch_dtype"] = "bfloat16"
    with open(cp, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    try:
        from transformers import AutoConfig, LlamaForCausalLM

        again = LlamaForCausalLM(AutoConfig.from_pretrained(out_dir))
        got = rope_theta_of(again)
        ok = (abs(got / MODEL["rope_theta"] - 1) < 1e-3 and again.config.vocab_size == MODEL["vocab_size"]
              and again.lm_head.weight.data_ptr() == again.model.embed_tokens.weight.data_ptr())
        if not ok:
            raise ValueError(f"rope_theta {got}, vocab {again.config.vocab_size}")
    except Exception as e:
        log(f"note: edited config.json does not read back right ({e}); keeping transformers' own")
        with open(cp, "w") as f:
            f.write(original)
    _, header = read_safetensors(st)
    names = sorted(k for k in header if k != "__metadata__")
    dtypes = sorted({header[k]["dtype"] for k in names})
    log(f"saved {len(names)} tensors ({', '.join(dtypes)}) to {st}; lm_head stored: {'lm_head.weight' in names}")
    del m16


TOKENIZER_TEXTS = ["".join(chr(i) for i in range(128)), "a . b ? c ! d , e 's n't  ", "The pass key is 01234\n",
                   "h\u00e9llo \u2713 \U0001f600", " \t\r\n x"]


def check_tokenizer(out_dir):
    """Round-trips text through the Rust tokenizers library and transformers' fast tokenizer."""
    path = os.path.join(out_dir, "tokenizer.json")
    results = {}
    try:
        from tokenizers import Tokenizer

        tk = Tokenizer.from_file(path)
        for t in TOKENIZER_TEXTS:
            ids = tk.encode(t, add_special_tokens=False).ids
            assert ids == list(t.encode("utf-8")), f"encode mismatch for {t!r}: {ids[:16]}"
            back = tk.decode(ids, skip_special_tokens=False)
            assert back == t, f"decode mismatch: {back!r} != {t!r}"
        assert tk.token_to_id("<|bos|>") == BOS and tk.get_vocab_size(with_added_tokens=True) == make_tokenizer.VOCAB_SIZE
        results["tokenizers"] = True
        log("tokenizer check: tokenizers.Tokenizer round-trips bytes: OK")
    except ImportError as e:
        log(f"tokenizer check (tokenizers) skipped: {e}")
    except Exception as e:
        results["tokenizers"] = False
        log(f"TOKENIZER CHECK FAILED (tokenizers): {type(e).__name__}: {e}")
    try:
        from transformers import PreTrainedTokenizerFast
    except Exception as e:
        log(f"tokenizer check (transformers) skipped: {e}")
        return results
    try:
        tok = PreTrainedTokenizerFast(tokenizer_file=path,
                                      bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>",
                                      clean_up_tokenization_spaces=False)
        for t in TOKENIZER_TEXTS:
            ids = tok.encode(t, add_special_tokens=False)
            assert ids == list(t.encode("utf-8")), f"encode mismatch for {t!r}: {ids[:16]}"
            back = tok.decode(ids, clean_up_tokenization_spaces=False)
            assert back == t, f"decode mismatch: {back!r} != {t!r}"
        assert tok.convert_tokens_to_ids("<|bos|>") == BOS and tok.convert_tokens_to_ids("<|pad|>") == PAD
        assert len(tok) == make_tokenizer.VOCAB_SIZE, f"len(tokenizer) = {len(tok)}"
        results["transformers"] = True
        log("tokenizer check: transformers PreTrainedTokenizerFast round-trips bytes: OK")
    except Exception as e:
        results["transformers"] = False
        log(f"TOKENIZER CHECK FAILED (transformers): {type(e).__name__}: {e}")
    return results


def check_reload(torch, model, out_dir, tasks, device):
    """Reloads OUT with LlamaForCausalLM.from_pretrained; compares logits with the evaluated model."""
    try:
        from transformers import LlamaForCausalLM

        ref = LlamaForCausalLM.from_pretrained(out_dir).to(device).float().eval()
        rng = random.Random(7)
        prompt, _, _ = tasks.sample("multikey", rng, 512)
        x = torch.tensor([[BOS] + list(prompt.encode("ascii"))], device=device)
        with torch.no_grad():
            a = forward_logits(ref, x).float()
            model.eval()
            b = forward_logits(model, x).float()
            model.train()
        diff = (a - b).abs().max().item()
        log(f"reload check: from_pretrained(out) vs the evaluated model, fp32, max |logit diff| = {diff:.3g} "
            f"({'OK' if diff < 1e-3 else 'MISMATCH'})")
        return diff
    except Exception as e:
        log(f"RELOAD CHECK FAILED: {type(e).__name__}: {e}")
        return None


def file_sizes(out_dir):
    rows = []
    for root, _, files in os.walk(out_dir):
        for f in sorted(files):
            p = os.path.join(root, f)
            rows.append((os.path.relpath(p, out_dir), os.path.getsize(p)))
    for rel, size in sorted(rows):
        print(f"  {size / 1e6:9.3f} MB  {rel}", flush=True)
    return rows


# ---------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--time-budget", type=float, default=420.0, help="seconds of training loop (default 420)")
    p.add_argument("--resume", help="folder of an earlier run (its ckpt/ or its model.safetensors)")
    p.add_argument("--eval-only", help="evaluate DIR/model.safetensors and write OUT/eval.json")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--cooldown", type=float, default=0.15, help="last fraction of the budget with linear lr decay to 10%%")
    p.add_argument("--tokens-per-step", type=int, default=65536)
    p.add_argument("--min-seqs", type=int, default=16, help="at least this many rows per step at long lengths")
    p.add_argument("--lm-weight", type=float, default=0.1, help="weight of the mean prompt-token loss")
    p.add_argument("--bos-drop", type=float, default=0.1, help="fraction of training rows without <|bos|>")
    p.add_argument("--replay", type=float, default=0.2, help="fraction of steps at shorter, earlier lengths")
    p.add_argument("--advance-acc", type=float, default=0.9)
    p.add_argument("--min-stage-steps", type=int, default=50)
    p.add_argument("--max-stage-frac", type=float, default=0.35,
                   help="advance anyway after this fraction of the budget in one stage if accuracy >= 0.5")
    p.add_argument("--max-context", type=int, default=8192)
    p.add_argument("--start-stage", type=int, default=None)
    p.add_argument("--eval-contexts", default="1024,2048,4096,8192")
    p.add_argument("--eval-trials", type=int, default=50)
    p.add_argument("--ckpt-every", type=float, default=120.0, help="seconds between checkpoints")
    p.add_argument("--log-every", type=float, default=10.0, help="seconds between progress lines")
    p.add_argument("--compile", action="store_true", help="torch.compile the forward (slow to start)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    tasks = Tasks(os.path.join(HERE, "tasks.json"))
    for p in make_tokenizer.write(out_dir):
        log(f"wrote {p}")

    import contextlib

    import torch
    import torch.nn.functional as F

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        log(f"device {torch.cuda.get_device_name(device)}")
    else:
        log("WARNING: no CUDA device, running on CPU (only useful as a smoke test)")

    def amp():
        if device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    tok_ok = check_tokenizer(out_dir)
    model = build_model(torch, device)
    contexts = [int(c) for c in args.eval_contexts.split(",") if c]

    if args.eval_only:
        load_weights(torch, model, os.path.join(args.eval_only, "model.safetensors"))
        results = evaluate(torch, model, tasks, contexts, args.eval_trials, args.seed, device, amp)
        print_table(results, contexts)
        with open(os.path.join(out_dir, "eval.json"), "w") as f:
            json.dump({"model_dir": os.path.abspath(args.eval_only), "results": results}, f, indent=2)
        return 0

    stages = [(lo, min(hi, args.max_context)) for lo, hi in STAGES if lo < args.max_context]
    state = {"step": 0, "stage": 0, "train_seconds": 0.0, "tokens": 0, "max_len": 0,
             "rng": None, "history": [], "runs": 0}
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")
    except (TypeError, RuntimeError):
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    warmup = args.warmup_steps

    if args.resume:
        ck = find_ckpt(args.resume)
        if ck:
            blob = torch_load(torch, os.path.join(ck, "state.pt"))
            missing, unexpected = model.load_state_dict(blob["model"], strict=False)
            assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
            model.tie_weights()
            state.update(blob["state"])
            op = os.path.join(ck, "optim.pt")
            if os.path.isfile(op):
                osd = torch_load(torch, op)["optim"]
                for st in osd["state"].values():
                    for k in ("exp_avg", "exp_avg_sq"):
                        if k in st:
                            st[k] = st[k].float()
                try:
                    opt.load_state_dict(osd)
                    warmup = min(warmup, 20)
                except Exception as e:
                    log(f"note: optimizer state not restored ({e}); fresh AdamW")
            log(f"resumed from {ck}: step {state['step']}, stage {state['stage']}, "
                f"{state['train_seconds']:.0f}s trained before")
        elif os.path.isfile(os.path.join(args.resume, "model.safetensors")):
            load_weights(torch, model, os.path.join(args.resume, "model.safetensors"))
            prev = os.path.join(args.resume, "eval.json")
            if os.path.isfile(prev):
                with open(prev) as f:
                    t = json.load(f).get("train", {})
                for k in ("step", "stage", "train_seconds", "tokens", "max_len", "runs"):
                    if k in t:
                        state[k] = t[k]
            log(f"resumed weights only from {args.resume} (fresh optimizer), stage {state['stage']}")
        else:
            raise SystemExit(f"--resume {args.resume}: expected ckpt/state.pt or model.safetensors there")
    if args.start_stage is not None:
        state["stage"] = args.start_stage
    state["stage"] = max(0, min(state["stage"], len(stages) - 1))
    state["runs"] = state.get("runs", 0) + 1

    rng = random.Random(args.seed)
    if state.get("rng") is not None:
        rng.setstate(state["rng"])  # continue the data stream of the earlier run
    fwd = forward_logits
    if args.compile:
        fwd = torch.compile(forward_logits, dynamic=True)

    ckpt_dir = os.path.join(out_dir, "ckpt")
    budget = args.time_budget
    log(f"training for {budget:.0f}s, stages {stages}, starting at stage {state['stage']} {stages[state['stage']]}, "
        f"{args.tokens_per_step} tokens/step, lr {args.lr}")

    model.train()
    window = deque(maxlen=20)
    pending = []
    stage_steps, stage_t0 = 0, 0.0
    run_step = 0
    t_start = time.time()
    last_log, last_ckpt = t_start, t_start
    agg = {"loss": 0.0, "ans": 0.0, "n": 0, "tok": 0}

    def elapsed():
        return time.time() - t_start

    def flush_metrics():
        """Syncs with the device every few steps; decides stage changes."""
        nonlocal stage_steps, stage_t0
        for stage_of, replay, m in pending:
            m = m.tolist()
            agg["loss"] += m[4]
            agg["ans"] += m[5]
            agg["n"] += 1
            if replay or stage_of != state["stage"]:
                continue
            window.append(m[:4])
            stage_steps += 1
        pending.clear()
        if state["stage"] >= len(stages) - 1 or len(window) < window.maxlen:
            return
        pk = sum(w[0] for w in window) / max(1, sum(w[1] for w in window))
        mk = sum(w[2] for w in window) / max(1, sum(w[3] for w in window))
        stage_time = elapsed() - stage_t0
        good = min(pk, mk) >= args.advance_acc and stage_steps >= args.min_stage_steps
        stale = stage_time > args.max_stage_frac * budget and min(pk, mk) >= 0.5
        if good or stale:
            state["history"].append({"stage": state["stage"], "range": list(stages[state["stage"]]),
                                     "steps": stage_steps, "seconds": round(stage_time, 1),
                                     "passkey_acc": round(pk, 3), "multikey_acc": round(mk, 3),
                                     "why": "accuracy" if good else "time"})
            state["stage"] += 1
            log(f"==> stage {state['stage']} {stages[state['stage']]} (previous: passkey {pk:.1%}, "
                f"multikey {mk:.1%} after {stage_steps} steps, {stage_time:.0f}s{'' if good else ', by time'})")
            window.clear()
            stage_steps, stage_t0 = 0, elapsed()

    while elapsed() < budget:
        lo, hi = stages[state["stage"]]
        replay = state["stage"] > 0 and rng.random() < args.replay
        if replay:
            lo, hi = stages[0][0], stages[state["stage"]][0]
        L = int(round(rng.uniform(lo, hi) / 64.0)) * 64
        L = max(lo, min(hi, L))
        B = max(2, args.tokens_per_step // L, args.min_seqs if L >= 2048 else 2)
        B += B % 2
        ids, ans, lm, task_of = make_batch(torch, tasks, rng, L, B, args.bos_drop)
        if device.type == "cuda":
            ids, ans, lm, task_of = (t.pin_memory().to(device, non_blocking=True) for t in (ids, ans, lm, task_of))

        frac = elapsed() / budget
        lr_scale = min(1.0, (run_step + 1) / max(1, warmup))
        if frac > 1 - args.cooldown:
            lr_scale *= 1 - 0.9 * min(1.0, (frac - (1 - args.cooldown)) / args.cooldown)
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_scale

        with amp():
            logits = fwd(model, ids)  # [B, L-1, V]
        tgt = ids[:, 1:]
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none").view(B, L - 1)
        a_m, l_m = ans[:, 1:].float(), lm[:, 1:].float()
        ans_loss = (ce * a_m).sum() / a_m.sum()
        lm_loss = (ce * l_m).sum() / l_m.sum().clamp(min=1.0)
        loss = ans_loss + args.lm_weight * lm_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

        with torch.no_grad():
            hit = (logits.argmax(-1) == tgt) | ~ans[:, 1:]
            row_ok = hit.all(1).float()
            is_pk = (task_of == 0).float()
            m = torch.stack([(row_ok * is_pk).sum(), is_pk.sum(), (row_ok * (1 - is_pk)).sum(), (1 - is_pk).sum(),
                             loss.detach(), ans_loss.detach()])
        pending.append((state["stage"], replay, m))
        state["step"] += 1
        run_step += 1
        state["tokens"] += B * L
        state["max_len"] = max(state["max_len"], L)
        agg["tok"] += B * L
        if run_step % 10 == 0:
            flush_metrics()

        now = time.time()
        if now - last_log >= args.log_every:
            flush_metrics()
            pk = sum(w[0] for w in window) / max(1, sum(w[1] for w in window))
            mk = sum(w[2] for w in window) / max(1, sum(w[3] for w in window))
            n = max(1, agg["n"])
            log(f"step {state['step']:6d} stage {state['stage']} L {L:5d}x{B:<4d} loss {agg['loss'] / n:.4f} "
                f"ans {agg['ans'] / n:.4f} acc pk {pk:6.1%} mk {mk:6.1%} lr {args.lr * lr_scale:.2e} "
                f"{agg['tok'] / (now - last_log) / 1e3:.0f}k tok/s")
            agg = {"loss": 0.0, "ans": 0.0, "n": 0, "tok": 0}
            last_log = now
        if now - last_ckpt >= args.ckpt_every:
            save_ckpt(torch, ckpt_dir, model, opt,
                      {**state, "train_seconds": state["train_seconds"] + elapsed(), "rng": rng.getstate()})
            last_ckpt = now
            log(f"checkpoint -> {ckpt_dir}")

    flush_metrics()
    state["train_seconds"] += elapsed()
    state["rng"] = rng.getstate()
    save_ckpt(torch, ckpt_dir, model, opt, state)
    log(f"training done: {state['step']} steps, {state['tokens'] / 1e6:.1f}M tokens, stage {state['stage']} "
        f"{stages[state['stage']]}, longest sequence {state['max_len']}; checkpoint -> {ckpt_dir}")

    # The shipped model is bf16: round the weights first, so evaluation measures what ships.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    save_model(torch, model, out_dir)
    results = evaluate(torch, model, tasks, contexts, args.eval_trials, args.seed, device, amp)
    print_table(results, contexts)
    reload_diff = check_reload(torch, model, out_dir, tasks, device)
    train_summary = {k: v for k, v in state.items() if k != "rng"}
    train_summary["train_seconds"] = round(train_summary["train_seconds"], 1)
    train_summary["stage_range"] = list(stages[state["stage"]])
    import transformers

    report = {
        "model": {**MODEL, "parameters": sum(p.numel() for p in model.parameters())},
        "train": train_summary,
        "args": vars(args),
        "results": results,
        "tokenizer_check": tok_ok,
        "reload_max_logit_diff": reload_diff,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "total_seconds": round(time.time() - T0, 1),
    }
    with open(os.path.join(out_dir, "eval.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    log(f"wrote {os.path.join(out_dir, 'eval.json')}; files:")
    rows = file_sizes(out_dir)
    big = [r for r in rows if r[1] > 16_000_000]
    if big:
        log(f"WARNING: files over 16 MB will not come back from the device machine: {big}")
    log(f"total {time.time() - T0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
