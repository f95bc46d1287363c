#!/usr/bin/env python3
"""GPU training-step throughput for HF GPT2LMHeadModel: the anchor of
`dtrain bench train --device cuda`.

Usage: python torch_gpu_train.py [--preset small|124m] [--batch B] [--seq T]
                                 [--steps 10] [--warmup 3] [--precision fp32|bf16]
                                 [--compile] [--json out.json]

One step = zero_grad + forward (LM loss on random tokens, labels = inputs) +
backward + AdamW(fused) step (lr 3e-4, wd 0.1, betas (0.9, 0.95)), dropout 0.
fp32 disables TF32 (the same arithmetic as dtrain's fp32 mode); bf16 runs
the forward and backward under autocast with fp32 master weights. Each step
ends with torch.cuda.synchronize(), so its time is the GPU's. Reports the
median step time, tokens/s, and the FLOP/s of 6*N + 6*L*C*T FLOPs per token.
"""
import argparse, json, math, statistics, time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

PRESETS = {
    "small": dict(n_layer=4, n_head=4, n_embd=256, n_positions=1024),
    "124m": dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="124m", choices=PRESETS)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    dev = torch.device("cuda")
    cfg = GPT2Config(vocab_size=50257, **PRESETS[a.preset], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     attn_implementation="sdpa")
    model = GPT2LMHeadModel(cfg).to(dev)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95), fused=True)
    fwd = torch.compile(model) if a.compile else model
    x = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            out = fwd(input_ids=x, labels=x)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        torch.cuda.synchronize()
        return out.loss.item()

    losses, times = [], []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        loss = step()
        dt = time.perf_counter() - t0
        losses.append(loss)
        if i >= a.warmup:
            times.append(dt)
        print(f"step {i:2d} loss {loss:.4f} time {dt*1e3:8.2f} ms", flush=True)

    toks = a.batch * a.seq
    med = statistics.median(times)
    flops_tok = 6 * n_params + 6 * cfg.n_layer * cfg.n_embd * a.seq
    res = dict(torch=torch.__version__, gpu=torch.cuda.get_device_name(), preset=a.preset, precision=a.precision,
               compiled=a.compile, n_params=n_params, batch=a.batch, seq=a.seq, median_step_s=med,
               min_step_s=min(times), tokens_per_s=toks / med, tflops=flops_tok * toks / med / 1e12,
               loss_first=losses[0], loss_last=losses[-1], ln_vocab=math.log(cfg.vocab_size),
               peak_gpu_MB=torch.cuda.max_memory_allocated() / 2**20)
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
