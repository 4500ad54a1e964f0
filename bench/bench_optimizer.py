"""AdamW step: torch's per-parameter loop, foreach and fused, on the `small` preset's
parameters (one thread, CPU time, median of 5 interleaved rounds), and the fused result
against the loop's after 3 steps.

    .venv/bin/python bench/bench_optimizer.py
"""

import time

import torch

from speechswarm.build import build_model
from speechswarm.config import load_config

torch.set_num_threads(1)
cfg = load_config("small")
m = build_model(cfg.model, 161, 29)
params = [p for p in m.parameters()]
for p in params:
    p.grad = torch.randn_like(p)
print(sum(p.numel() for p in params) / 1e6, "M params")
opts = {
    k: torch.optim.AdamW(params, lr=1e-3, **kw)
    for k, kw in {
        "loop": dict(foreach=False),
        "foreach": dict(foreach=True),
        "fused": dict(fused=True),
    }.items()
}
times = {k: [] for k in opts}
for _ in range(5):
    for k, o in opts.items():
        t = time.process_time()
        o.step()
        times[k].append(time.process_time() - t)
for k, v in times.items():
    print(k, "median CPU s", round(sorted(v)[2], 4))
# numerics: same start, one step each
base = [p.detach().clone() for p in params]
res = {}
for k, kw in {
    "loop": dict(foreach=False),
    "foreach": dict(foreach=True),
    "fused": dict(fused=True),
}.items():
    ps = [torch.nn.Parameter(b.clone()) for b in base]
    for p, q in zip(ps, params, strict=True):
        p.grad = q.grad.clone()
    o = torch.optim.AdamW(ps, lr=1e-3, **kw)
    for _ in range(3):
        o.step()
    res[k] = ps
print(
    "foreach == loop:",
    all(torch.equal(a, b) for a, b in zip(res["loop"], res["foreach"], strict=True)),
)
print(
    "fused max diff:",
    max(
        float((a - b).detach().abs().max()) for a, b in zip(res["loop"], res["fused"], strict=True)
    ),
)
