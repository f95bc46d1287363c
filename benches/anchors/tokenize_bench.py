#!/usr/bin/env python3
"""Tokenization throughput anchors for `dtrain bench tokenize`.

Usage: tokenize_bench.py DOCS.json THREADS REPEATS
DOCS.json: a JSON list of strings (the documents dtrain timed). Encodes them
with (1) Hugging Face tokenizers' Python binding, GPT-2 BPE built from this
repository's assets/gpt2 files, encode_batch (Rust, parallel); (2) tiktoken's
r50k_base, encode_batch with THREADS threads. Prints one JSON object:
{"hf_tokenizers": {"tokens": N, "seconds": S}, "tiktoken": {...}} with the
median of REPEATS timed runs after one warm-up.
"""
import json, os, statistics, sys, time

docs = json.load(open(sys.argv[1]))
threads, repeats = int(sys.argv[2]), int(sys.argv[3])
os.environ["RAYON_NUM_THREADS"] = str(threads)

from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
import tiktoken  # noqa: E402

assets = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "assets", "gpt2")
hf = Tokenizer(models.BPE.from_file(os.path.join(assets, "encoder.json"), os.path.join(assets, "vocab.bpe")))
hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
hf.decoder = decoders.ByteLevel()
# r50k_base built from the same files (tiktoken would download them otherwise).
from tiktoken.load import data_gym_to_mergeable_bpe_ranks  # noqa: E402

tk = tiktoken.Encoding(
    name="r50k_base_local",
    pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    mergeable_ranks=data_gym_to_mergeable_bpe_ranks(os.path.join(assets, "vocab.bpe"), os.path.join(assets, "encoder.json")),
    special_tokens={"<|endoftext|>": 50256},
)


def timed(fn):
    fn()
    times, n = [], 0
    for _ in range(repeats):
        t = time.perf_counter()
        n = fn()
        times.append(time.perf_counter() - t)
    return {"tokens": n, "seconds": statistics.median(times)}


out = {
    "hf_tokenizers": timed(lambda: sum(len(e.ids) for e in hf.encode_batch(docs, add_special_tokens=False))),
    "tiktoken": timed(lambda: sum(len(x) for x in tk.encode_batch(docs, num_threads=threads, allowed_special="all"))),
}
print(json.dumps(out))
