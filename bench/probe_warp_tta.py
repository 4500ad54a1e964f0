"""Does warping the frequency axis at test time help on unseen persons? A probe, not a feature.

    .venv/bin/python bench/probe_warp_tta.py --checkpoint runs/demo/checkpoints/last.pt \
        --manifest data/synth/dev.jsonl [--warps 0.85 0.95 1.05] [--lm runs/demo/lm.arpa --alpha 2]

For every utterance the model's log-probabilities are computed under each VTLP factor of
`--warps` (the training augmentation's frequency warp, `features.frequency_warp_matrix`) and
under none. Printed, as CER and WER over the manifest: each warp alone; the warp the model is
most confident under (mean over frames of the best token's log-probability: per-utterance
VTLN without a reference); the same choice pooled over all utterances of one speaker (the
manifest's `speaker`: one person at one speed and pitch) or of one person (`identity`), as
Kaldi's per-speaker VTLN pools its statistics; the mean of the posteriors under all warps and
none (test-time augmentation: the warp changes only frequency, so the frames line up); and
the oracles (the best single warp per utterance, per speaker, per person: for scale).
Greedy decoding, or beam search with `--lm`.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

import speechswarm
from speechswarm.build import autocast
from speechswarm.data.audio import load_audio
from speechswarm.data.manifest import read_manifest
from speechswarm.decode import DecoderOptions, make_decoder
from speechswarm.metrics import ErrorCounts, char_errors, word_errors


def add_decoding_args(p: argparse.ArgumentParser) -> None:
    """The probes' shared options: the LM for beam search (greedy without) and the batch."""
    p.add_argument("--lm", help="word LM (ARPA): beam search instead of greedy")
    p.add_argument("--alpha", type=float, default=2.0)
    p.add_argument("--beta", type=float, default=0.0)
    p.add_argument("--batch", type=int, default=16)


def probe_decoder(args: argparse.Namespace, tokens: list[str]):
    """Greedy, or beam search (32) with `args.lm` at `args.alpha` / `args.beta`."""
    options = DecoderOptions("beam", lm=args.lm, alpha=args.alpha, beta=args.beta, beam_size=32)
    return make_decoder(options if args.lm else DecoderOptions(), tokens)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--warps", type=float, nargs="+", default=[0.85, 0.95, 1.05])
    add_decoding_args(p)
    args = p.parse_args()

    asr = speechswarm.load(args.checkpoint)
    decoder = probe_decoder(args, asr.tokenizer.tokens)
    warps = [1.0, *(w for w in args.warps if w != 1.0)]
    utts = read_manifest(args.manifest)
    errors: dict[str, list[ErrorCounts]] = {}
    # per utterance: its groups, per-warp confidence and per-warp (char, word) errors
    rows: list[tuple[dict[str, str], list[float], list[tuple[ErrorCounts, ErrorCounts]]]] = []

    def add(name: str, ref: str, hyp: str) -> None:
        c, w = errors.setdefault(name, [ErrorCounts(), ErrorCounts()])
        errors[name] = [c + char_errors(ref, hyp), w + word_errors(ref, hyp)]

    for start in range(0, len(utts), args.batch):
        chunk = utts[start : start + args.batch]
        waves = [torch.from_numpy(load_audio(u.audio, asr.sample_rate, offset=u.offset,
                                             duration=u.duration)) for u in chunk]  # fmt: skip
        lens = torch.tensor([len(w) for w in waves])
        batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
        per_warp = []
        with torch.inference_mode():
            for a in warps:
                feats, feat_lens = asr.extractor(batch, lens, warp=torch.full((len(chunk),), a))
                with autocast(asr.device, asr.amp_dtype):
                    log_probs, out_lens = asr.model(feats, feat_lens)
                per_warp.append(log_probs.float())
        stacked = torch.stack(per_warp)  # (W, N, T', V)
        mean = torch.logsumexp(stacked, 0) - math.log(len(warps))
        confidence = stacked.max(-1).values  # (W, N, T')
        lens_np = out_lens.numpy()
        hyps = {
            f"warp {a:g}": decoder.decode(stacked[k].numpy(), lens_np) for k, a in enumerate(warps)
        }
        hyps["mean of posteriors"] = decoder.decode(mean.numpy(), lens_np)
        for i, u in enumerate(chunk):
            texts = {name: asr.tokenizer.decode(h[i]) for name, h in hyps.items()}
            for name, text in texts.items():
                add(name, u.text, text)
            n = int(lens_np[i])
            best = int(confidence[:, i, :n].mean(-1).argmax())
            add("most confident warp", u.text, texts[f"warp {warps[best]:g}"])
            singles = [texts[f"warp {a:g}"] for a in warps]
            cers = [char_errors(u.text, t).edits for t in singles]
            add("oracle warp", u.text, singles[int(np.argmin(cers))])
            groups = {
                "speaker": str(u.speaker),
                "person": str(u.extra.get("identity") or u.speaker),
            }
            conf = [float(confidence[k, i, :n].mean()) for k in range(len(warps))]
            rows.append(
                (groups, conf, [(char_errors(u.text, t), word_errors(u.text, t)) for t in singles])
            )
    for key in ("speaker", "person"):
        conf_sum: dict[str, np.ndarray] = {}
        edits: dict[str, np.ndarray] = {}
        for groups, conf, errs in rows:
            g = groups[key]
            conf_sum[g] = conf_sum.get(g, 0) + np.array(conf)
            edits[g] = edits.get(g, 0) + np.array([c.edits for c, _ in errs])
        for name, pick in ((f"confident per {key}", conf_sum), (f"oracle per {key}", edits)):
            choose = np.argmax if name.startswith("confident") else np.argmin
            c_tot, w_tot = ErrorCounts(), ErrorCounts()
            for groups, _, errs in rows:
                c, w = errs[int(choose(pick[groups[key]]))]
                c_tot, w_tot = c_tot + c, w_tot + w
            errors[name] = [c_tot, w_tot]
    decoding = f"beam + LM (alpha {args.alpha:g}, beta {args.beta:g})" if args.lm else "greedy"
    print(f"{len(utts)} utterances of {args.manifest}, {decoding}")
    for name, (c, w) in errors.items():
        print(f"  {name:<22} CER {c.rate:6.2%}  WER {w.rate:6.2%}")


if __name__ == "__main__":
    main()
