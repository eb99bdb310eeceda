#!/usr/bin/env python3
"""Byte-level tokenizer of kvoff's demo model, written as a Hugging Face tokenizer.json.

Ids 0..255 are the raw UTF-8 bytes (id == byte value); 256..263 are special tokens.
It is a BPE model with no merges behind a ByteLevel pre-tokenizer: ByteLevel maps each
byte to a printable unicode character (GPT-2's bytes_to_unicode), and the vocabulary maps
that character back to the byte's value, so encode(text) == list(text.encode("utf-8")).
No post-processor: encode() never adds <|bos|>; callers prepend it (see tasks.json).

Needs only the standard library, so it runs without torch:
    python3 src/demo-model/make_tokenizer.py [OUT_DIR]   # default: this file's folder
"""
import json
import os
import sys

# Order fixes the ids: 256, 257, ...  vocab_size = 256 + len(SPECIAL_TOKENS) = 264, a
# multiple of 8 so the embedding/lm_head rows stay aligned for kvoff's kernels.
SPECIAL_TOKENS = [
    "<|bos|>",
    "<|eos|>",
    "<|pad|>",
    "<|reserved_0|>",
    "<|reserved_1|>",
    "<|reserved_2|>",
    "<|reserved_3|>",
    "<|reserved_4|>",
]
BOS_ID, EOS_ID, PAD_ID = 256, 257, 258
VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
MODEL_MAX_LENGTH = 8192


def bytes_to_unicode():
    """GPT-2's byte -> printable unicode char table, as the ByteLevel pre-tokenizer uses it."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def tokenizer_json():
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}  # id == byte value
    added = [
        {
            "id": 256 + i,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, tok in enumerate(SPECIAL_TOKENS)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        # use_regex false: the whole text is one "word"; with no merges BPE is then just a
        # per-character lookup, so splitting would change nothing but the cost.
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": vocab,
            "merges": [],
        },
    }


def tokenizer_config_json():
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": SPECIAL_TOKENS[0],
        "eos_token": SPECIAL_TOKENS[1],
        "pad_token": SPECIAL_TOKENS[2],
        "add_bos_token": False,
        "add_eos_token": False,
        # @huggingface/tokenizers and transformers both default this to true, which would
        # rewrite " ." into "." on decode and break the byte round trip.
        "clean_up_tokenization_spaces": False,
        "model_max_length": MODEL_MAX_LENGTH,
        "added_tokens_decoder": {
            str(256 + i): {
                "content": tok,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i, tok in enumerate(SPECIAL_TOKENS)
        },
    }


def write(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, obj in (("tokenizer.json", tokenizer_json()), ("tokenizer_config.json", tokenizer_config_json())):
        path = os.path.join(out_dir, name)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=2)
            f.write("\n")
        paths.append(path)
    return paths


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    for p in write(out):
        print(f"wrote {p} ({os.path.getsize(p)} bytes)")
