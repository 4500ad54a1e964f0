"""Does adapting the model to a person's own unlabeled audio help on unseen persons? A probe.

    .venv/bin/python bench/probe_adapt.py --checkpoint runs/demo/checkpoints/last.pt \
        --manifest data/synth/dev.jsonl [--group person|speaker] [--lm runs/demo/lm.arpa --alpha 2]

Unsupervised adaptation per group of utterances (`identity`, one person; or `speaker`, one
person at one speed and pitch), using only the group's audio, never its transcripts:

- none: the trained model as it is;
- adabn: every BatchNorm's running mean and variance recomputed from the group's audio
  (Li et al. 2016, "Revisiting Batch Normalization for Practical Domain Adaptation"), one
  utterance per forward pass, so the conv BatchNorms never count padding;
- adabn-batch: the same from the padded batches of `--batch` utterances, as training sees them;
- adabn-half: the mean of the trained statistics and the group's;
- adabn-conv: the conv stack's BatchNorms only;
- tent: adabn, then a few steps of entropy minimisation over the group's frames on the
  BatchNorms' scales and shifts (Wang et al. 2021, "Tent"; for CTC, SUTA, Lin et al. 2022).

Each group starts from the trained weights. Greedy decoding, or beam search with `--lm`.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from probe_warp_tta import add_decoding_args, probe_decoder  # a sibling in bench/
from torch import nn

import speechswarm
from speechswarm.build import autocast
from speechswarm.data.audio import load_audio
from speechswarm.data.manifest import read_manifest
from speechswarm.metrics import ErrorCounts, char_errors, word_errors


def batch_norms(model: nn.Module, conv_only: bool = False) -> list[nn.modules.batchnorm._BatchNorm]:
    root = model.conv if conv_only else model
    return [m for m in root.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def features(asr, utts):
    waves = [torch.from_numpy(load_audio(u.audio, asr.sample_rate, offset=u.offset,
                                         duration=u.duration)) for u in utts]  # fmt: skip
    lens = torch.tensor([len(w) for w in waves])
    batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    return asr.extractor(batch, lens)


def recompute_stats(model, passes, norms, keep: float) -> None:
    """Running statistics of `norms` from forward passes over `passes` ((feats, lens) pairs);
    `keep` of the trained statistics stays in the mix. Momenta are left as they were."""
    trained = [(m.running_mean.clone(), m.running_var.clone(), m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the passes
        m.train()
    with torch.no_grad():
        for f, fl in passes:
            model(f, fl)
    for m, (mean, var, momentum) in zip(norms, trained, strict=True):
        m.running_mean.mul_(1 - keep).add_(keep * mean)
        m.running_var.mul_(1 - keep).add_(keep * var)
        m.momentum = momentum
        m.eval()


def entropy_steps(model, feats_batches, norms, steps: int, lr: float) -> None:
    params = [p for m in norms for p in (m.weight, m.bias)]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        for f, fl in feats_batches:
            log_probs, out_lens = model(f, fl)
            mask = torch.arange(log_probs.shape[1])[None, :] < out_lens[:, None]
            ent = -(log_probs.exp() * log_probs).sum(-1)
            loss = ent[mask].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--group", choices=("person", "speaker"), default="person")
    p.add_argument("--methods", nargs="+",
                   default=["none", "adabn", "adabn-half", "adabn-conv", "tent"])  # fmt: skip
    p.add_argument("--tent-steps", type=int, default=3)
    p.add_argument("--tent-lr", type=float, default=1e-3)
    add_decoding_args(p)
    args = p.parse_args()

    asr = speechswarm.load(args.checkpoint)
    trained = copy.deepcopy(asr.model.state_dict())
    decoder = probe_decoder(args, asr.tokenizer.tokens)
    utts = read_manifest(args.manifest)
    groups: dict[str, list] = {}
    for u in utts:
        key = (
            str(u.extra.get("identity") or u.speaker) if args.group == "person" else str(u.speaker)
        )
        groups.setdefault(key, []).append(u)
    totals = {m: [ErrorCounts(), ErrorCounts()] for m in args.methods}
    per_group: dict[str, dict[str, float]] = {}
    seconds = dict.fromkeys(args.methods, 0.0)
    for key, members in groups.items():
        members = sorted(members, key=lambda u: u.duration)
        with torch.no_grad():
            one = [features(asr, [u]) for u in members]
            batches = [
                (features(asr, members[i : i + args.batch]), members[i : i + args.batch])
                for i in range(0, len(members), args.batch)
            ]
        for method in args.methods:
            t0 = time.perf_counter()
            model = asr.model
            model.load_state_dict(trained)
            model.eval()
            if method != "none":
                norms = batch_norms(model, conv_only=method == "adabn-conv")
                passes = [fb for fb, _ in batches] if method == "adabn-batch" else one
                recompute_stats(model, passes, norms, keep=0.5 if method == "adabn-half" else 0)
                if method == "tent":
                    with torch.enable_grad():
                        entropy_steps(model, [fb for fb, _ in batches], norms, args.tent_steps,
                                      args.tent_lr)  # fmt: skip
            c_sum, w_sum = ErrorCounts(), ErrorCounts()
            with torch.inference_mode():
                for (f, fl), chunk in batches:
                    with autocast(asr.device, asr.amp_dtype):
                        log_probs, out_lens = model(f, fl)
                    hyps = decoder.decode(log_probs.float().numpy(), out_lens.numpy())
                    for u, h in zip(chunk, hyps, strict=True):
                        text = asr.tokenizer.decode(h)
                        c_sum, w_sum = (
                            c_sum + char_errors(u.text, text),
                            w_sum + word_errors(u.text, text),
                        )
            seconds[method] += time.perf_counter() - t0
            totals[method] = [totals[method][0] + c_sum, totals[method][1] + w_sum]
            per_group.setdefault(key, {})[method] = c_sum.rate
        row = "  ".join(f"{m} {per_group[key][m]:6.2%}" for m in args.methods)
        print(f"{key:<22} {len(members):4d} utts  {row}", flush=True)
    asr.model.load_state_dict(trained)
    decoding = f"beam + LM (alpha {args.alpha:g}, beta {args.beta:g})" if args.lm else "greedy"
    print(
        f"{len(utts)} utterances of {args.manifest}, {len(groups)} groups by {args.group}, {decoding}"
    )
    for m, (c, w) in totals.items():
        print(f"  {m:<12} CER {c.rate:6.2%}  WER {w.rate:6.2%}  ({seconds[m]:.0f} s)")


if __name__ == "__main__":
    main()
