#!/usr/bin/env python3
"""GPU-machine check (needs torch + transformers there): kvoff's logits against PyTorch/transformers on
randomly initialised Llama (llama3 rope scaling), Mistral and Qwen2 models saved with save_pretrained, in f32.

Run from the repo root after `npm run build`:  python3 test/gpu/transformers-parity.py [--kv-dtype f16]
For each model it runs `kvoff generate --prompt-tokens ... --logits-out`, re-runs transformers on the prompt plus
kvoff's generated tokens, and prints max |logit diff| / logit range per model (target <= 1e-3)."""
import json, os, subprocess, sys, tempfile
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

KV_DTYPE = sys.argv[sys.argv.index("--kv-dtype") + 1] if "--kv-dtype" in sys.argv else "f16"
BASE = dict(vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
MODELS = [
    ("llama-3.1 (llama3 rope, GQA)", LlamaConfig, LlamaForCausalLM,
     dict(rope_theta=500000.0, rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                                original_max_position_embeddings=128))),
    ("llama-2 (MHA, untied)", LlamaConfig, LlamaForCausalLM, dict(num_key_value_heads=4, rope_theta=10000.0)),
    ("mistral (MQA)", MistralConfig, MistralForCausalLM, dict(num_key_value_heads=1, sliding_window=None, rope_theta=1e6)),
    ("qwen2 (bias, tied)", Qwen2Config, Qwen2ForCausalLM, dict(tie_word_embeddings=True, use_sliding_window=False, rope_theta=1e6)),
]

def main():
    torch.manual_seed(0)
    prompt = [int(x) for x in torch.randint(3, 300, (200,))]
    new = 16
    worst = 0.0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = os.path.join(tmp, "tuned.json")
        json.dump({"version": 1, "engine": {"kvDtype": KV_DTYPE}}, open(cfg_path, "w"))
        for name, Cfg, Model, extra in MODELS:
            cfg = Cfg(**{**BASE, **extra})
            model = Model(cfg).float().eval()
            for p in model.parameters():  # larger weights than the 0.02 init, so logits have a real range
                p.data.normal_(0, 0.08) if p.dim() > 1 else p.data.uniform_(0.8, 1.2)
            d = os.path.join(tmp, name.split()[0])
            model.save_pretrained(d, safe_serialization=True)
            out = os.path.join(tmp, "logits.bin")
            r = subprocess.run(["node", "dist/src/cli/main.js", "generate", "--model", d, "--backend", "cpu", "--config", cfg_path,
                                "--prompt-tokens", ",".join(map(str, prompt)), "--max-new-tokens", str(new), "--json",
                                "--logits-out", out], capture_output=True, text=True)
            if r.returncode != 0:
                print(name, "kvoff failed:", r.stderr); sys.exit(1)
            toks = json.loads(r.stdout)["tokens"]
            ours = torch.frombuffer(bytearray(open(out, "rb").read()), dtype=torch.float32).view(len(toks), -1)
            with torch.no_grad():
                ref = model(torch.tensor([prompt + toks[:-1]])).logits[0, len(prompt) - 1:].float()
            rng = (ref.max() - ref.min()).item()
            err = (ours - ref).abs().max().item()
            agree = sum(int(a == b) for a, b in zip(toks, ref.argmax(-1).tolist()))
            rows.append((name, err, rng, err / rng, agree, len(toks)))
            worst = max(worst, err / rng)
    print(f"| model | max abs err | logit range | err / range | greedy tokens agreeing | (KV {KV_DTYPE})")
    print("|---|---|---|---|---|")
    for name, err, rng, rel, agree, n in rows:
        print(f"| {name} | {err:.3e} | {rng:.3f} | {rel:.2e} | {agree}/{n} |")
    print("PASS" if worst <= 1e-3 else "FAIL", f"worst err/range {worst:.2e} (target <= 1e-3)")
    sys.exit(0 if worst <= 1e-3 else 1)

if __name__ == "__main__":
    main()
