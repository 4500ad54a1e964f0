"""Distributed training throughput on this machine: one process vs DDP vs Hogwild.

    .venv/bin/python bench/bench_distributed.py                # table; ~2 min on 2 cores
    .venv/bin/python bench/bench_distributed.py --json --steps 8 --preset tiny

The `--preset` model (fp32, no augmentation) trains on fixed synthetic batches (`--batch`
utterances of `--seconds` s of noise with random 40-character targets: speed does not depend
on the content), so only compute and communication are measured:
- `1 x N threads`: one process with N torch threads (N = `--procs`), and `1 x 1 thread`;
- `DDP N x 1`: N gloo processes (torch.multiprocessing spawn), one thread each, each on its
  own batch; also the step with gradient sync switched off (`no_sync`), whose difference is
  DDP's communication cost per step, and a bare all-reduce of a tensor of the model's size;
- `Hogwild N x 1`: N forked processes, one thread each, stepping one shared model.
Throughput = audio seconds trained per wall second, summed over processes; each row is the
median step after `--warmup` steps. Numbers from a shared machine are lower bounds: the load
average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from speechswarm.build import build_features, build_model
from speechswarm.config import load_config

SAMPLE_RATE = 16000


def make_parts(preset: str, batch: int, seconds: float, seed: int):
    cfg = load_config(preset, ["train.precision=fp32"])
    torch.manual_seed(0)  # the same initial model in every process
    extractor = build_features(cfg.features, SAMPLE_RATE)
    model = build_model(cfg.model, extractor.num_features, 29)
    g = torch.Generator().manual_seed(seed)
    waves = 0.1 * torch.randn(batch, int(seconds * SAMPLE_RATE), generator=g)
    wave_lens = torch.full((batch,), waves.shape[1], dtype=torch.int64)
    tokens = torch.randint(1, 29, (batch, 40), generator=g)
    token_lens = torch.full((batch,), 40, dtype=torch.int64)
    with torch.no_grad():
        feats, feat_lens = extractor(waves, wave_lens)
    return model, (feats, feat_lens, tokens, token_lens)


def step_fn(model, forward_model, data):
    ctc = torch.nn.CTCLoss(zero_infinity=True, reduction="sum")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    feats, feat_lens, tokens, token_lens = data

    def step():
        log_probs, out_lens = forward_model(feats, feat_lens)
        loss = ctc(log_probs.transpose(0, 1), tokens, out_lens, token_lens) / len(tokens)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def timed(step, steps: int, warmup: int) -> float:
    """Median seconds per step."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_single(args, threads: int) -> dict:
    torch.set_num_threads(threads)
    model, data = make_parts(args.preset, args.batch, args.seconds, 0)
    seconds = timed(step_fn(model, model, data), args.steps, args.warmup)
    return {"mode": f"1 x {threads} thread(s)", "step_s": seconds,
            "audio_s_per_s": args.batch * args.seconds / seconds}  # fmt: skip


def _ddp_worker(rank: int, world: int, init_file: str, args, queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)  # fmt: skip
    model, data = make_parts(args.preset, args.batch, args.seconds, rank)
    ddp_model = torch.nn.parallel.DistributedDataParallel(model)
    synced = timed(step_fn(model, ddp_model, data), args.steps, args.warmup)
    step = step_fn(model, ddp_model, data)

    def local_step():
        with ddp_model.no_sync():
            step()

    local = timed(local_step, args.steps, args.warmup)
    flat = torch.zeros(sum(p.numel() for p in model.parameters()))
    for _ in range(3):
        dist.all_reduce(flat)
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        dist.all_reduce(flat)
        times.append(time.perf_counter() - t0)
    if rank == 0:
        queue.put({"synced": synced, "local": local, "allreduce": statistics.median(times),
                   "megabytes": flat.numel() * 4 / 1e6})  # fmt: skip
    dist.destroy_process_group()


def bench_ddp(args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_ddp_worker, args=(args.procs, f"{tmp}/init", args, queue),
                           nprocs=args.procs, start_method="spawn")  # fmt: skip
    r = queue.get()
    return {"mode": f"DDP {args.procs} x 1 thread", "step_s": r["synced"],
            "audio_s_per_s": args.procs * args.batch * args.seconds / r["synced"],
            "step_without_sync_s": r["local"], "ddp_overhead_s": r["synced"] - r["local"],
            "allreduce_s": r["allreduce"], "allreduce_mb": r["megabytes"]}  # fmt: skip


def _hogwild_worker(rank: int, model, args, done) -> None:
    torch.set_num_threads(1)
    _, data = make_parts(args.preset, args.batch, args.seconds, rank)
    done.put(timed(step_fn(model, model, data), args.steps, args.warmup))


def bench_hogwild(args) -> dict:
    model, _ = make_parts(args.preset, args.batch, args.seconds, 0)
    model.share_memory()
    ctx = mp.get_context("fork")
    done = ctx.Queue()
    procs = [ctx.Process(target=_hogwild_worker, args=(r, model, args, done))
             for r in range(args.procs)]  # fmt: skip
    for p in procs:
        p.start()
    steps = [done.get() for _ in procs]
    for p in procs:
        p.join()
    step = statistics.median(steps)
    return {"mode": f"Hogwild {args.procs} x 1 thread", "step_s": step,
            "audio_s_per_s": args.procs * args.batch * args.seconds / step}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rows = [bench_single(args, 1), bench_single(args, args.procs), bench_ddp(args),
            bench_hogwild(args)]  # fmt: skip
    out = sys.stderr if args.json else sys.stdout
    print(f"{args.preset}, batch {args.batch} x {args.seconds:g} s per process, fp32; "
          f"load average before: {load:.2f}, after: {os.getloadavg()[0]:.2f}", file=out)  # fmt: skip
    print("| mode | s/step | audio s/s (all processes) |", file=out)
    print("|---|---|---|", file=out)
    for r in rows:
        print(f"| {r['mode']} | {r['step_s']:.3f} | {r['audio_s_per_s']:.1f} |", file=out)
    ddp = rows[2]
    print(f"DDP: step without gradient sync {ddp['step_without_sync_s']:.3f} s, communication "
          f"{1000 * ddp['ddp_overhead_s']:.0f} ms/step; bare all-reduce of "
          f"{ddp['allreduce_mb']:.1f} MB: {1000 * ddp['allreduce_s']:.1f} ms", file=out)  # fmt: skip
    if args.json:
        print(json.dumps({"load_before": load, "rows": rows}))


if __name__ == "__main__":
    main()
