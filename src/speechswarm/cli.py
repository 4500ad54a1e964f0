"""The `speechswarm` command: each subcommand parses its arguments and calls one library function.

speechswarm --help
speechswarm synth --out data/synth --hours 1
speechswarm train --config tiny train.out_dir=runs/mine
speechswarm lm build --manifest data/synth/train.jsonl --order 3 --out lm.arpa
speechswarm export --checkpoint runs/mine/checkpoints/best.pt --out model.onnx --check
speechswarm average runs/mine/checkpoints/step-*.pt --out runs/mine/avg.pt
speechswarm transcribe --onnx model.onnx --decoder beam --lm lm.arpa a.flac b.flac
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from speechswarm.errors import UsageError, run_command

# Command groups that live beside the code they drive; each module has `add_parser(sub)`.
COMMAND_MODULES = (
    "speechswarm.train.cli",
    "speechswarm.distributed.cli",
    "speechswarm.p2p.cli",
    "speechswarm.p2p.net.cli",
    "speechswarm.benchmark.cli",
    "speechswarm.dashboard.cli",
    "speechswarm.serve.cli",
    "speechswarm.chaos.cli",
)

PREPARE_FORMATS = (
    *("librispeech", "ljspeech", "userlibri", "commonvoice", "csv", "nemo", "kaldi", "lhotse"),
    "clients",
)
MANIFEST_EXPORT_FORMATS = ("nemo", "lhotse")  # = speechswarm.data.corpora.EXPORTERS


def main(argv: list[str] | None = None) -> int:
    """The `speechswarm` command. A user error (`speechswarm.errors.SpeechswarmError`, a
    missing input file) prints one line and exits 1; any other exception keeps its traceback."""
    return run_command(_parser(), argv)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speechswarm", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser(
        "synth", help="synthesise the built-in English corpus with Debian TTS voices"
    )
    s.add_argument(
        "--out", default="data/synth", help="output folder (LibriSpeech layout + manifests)"
    )
    s.add_argument(
        "--hours", type=float, default=None, help="hours of training audio (default: the demo size)"
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--workers", type=int, default=None, help="parallel TTS processes (default: all cores)"
    )
    s.add_argument(
        "--text",
        default=None,
        help="a text file, one sentence per line, instead of the built-in text",
    )
    s.set_defaults(func=_synth)

    s = sub.add_parser("prepare", help="import a corpus into a JSONL manifest")
    s.add_argument("format", choices=PREPARE_FORMATS)
    s.add_argument("src", help="corpus folder or file; for 'clients': a module:function hook")
    s.add_argument("--out", required=True, help="manifest path (.jsonl); for 'clients': a folder")
    s.add_argument(
        "--split",
        default="train",
        help="Common Voice TSV split name (train, dev, test, validated, ...)",
    )
    s.add_argument(
        "--subsets",
        default="",
        help="userlibri: comma-separated split folders to import, e.g. test-clean (the P2P "
        "seed's clients); default: every split",
    )
    s.add_argument(
        "--alphabet",
        choices=("english", "auto"),
        default="english",
        help="english: a-z ' and space (accents folded, numbers spelled); auto: the data's own "
        "letters, nothing folded (train with tokenizer.alphabet=auto); either way what changed "
        "is counted in OUT.text.json",
    )
    s.add_argument(
        "--digits",
        choices=("spell", "keep"),
        default=None,
        help="spell out numbers in English words or keep digits (default: spell with "
        "--alphabet english, keep with auto)",
    )
    s.add_argument("--workers", type=int, default=4, help="threads reading audio headers")
    s.set_defaults(func=_prepare)

    s = sub.add_parser("manifest", help="write a manifest in another toolkit's format")
    msub = s.add_subparsers(dest="action", required=True)
    t = msub.add_parser("export", help="as a NeMo JSONL manifest or a lhotse CutSet")
    t.add_argument("--format", required=True, choices=MANIFEST_EXPORT_FORMATS)
    t.add_argument("--manifest", required=True, help="a speechswarm manifest (.jsonl)")
    t.add_argument(
        "--out", required=True, help="nemo: manifest.json; lhotse: cuts.jsonl.gz (gzip by suffix)"
    )
    t.set_defaults(func=_manifest_export)

    s = sub.add_parser("validate", help="check a manifest's audio and text; report problems")
    s.add_argument("manifest")
    s.add_argument(
        "--config",
        default=None,
        help="preset or YAML whose tokenizer/model set the checks (default: tiny)",
    )
    s.add_argument("--report", default=None, help="write the full JSON report here")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=_validate)

    s = sub.add_parser("tokenizer", help="train a SentencePiece tokenizer")
    tsub = s.add_subparsers(dest="action", required=True)
    t = tsub.add_parser("train", help="train on a manifest's transcripts")
    t.add_argument("--manifest", required=True)
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram")
    t.add_argument("--out", required=True, help="tokenizer JSON path (use as tokenizer.path=...)")
    t.set_defaults(func=_tokenizer_train)

    s = sub.add_parser("shard", help="write WebDataset-compatible TAR shards of a manifest")
    s.add_argument("manifest")
    s.add_argument("--out", required=True)
    s.add_argument("--shard-size", type=int, default=1000, help="utterances per shard")
    s.add_argument("--workers", type=int, default=2)
    s.set_defaults(func=_shard)

    s = sub.add_parser("eval", help="WER/CER of a checkpoint (or ONNX model) on a manifest")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint (PyTorch)")
    src.add_argument("--onnx", help="a model from `speechswarm export` (onnxruntime)")
    s.add_argument("--manifest", required=True)
    s.add_argument("--device", default="auto")
    _add_precision_arg(s)
    s.add_argument("--batch-seconds", type=float, default=160.0)
    s.add_argument("--worst", type=int, default=5, help="how many worst utterances to show")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument(
        "--utterances",
        metavar="PATH",
        default=None,
        help="also write one JSON line per utterance: reference, hypothesis, errors, word times",
    )
    _add_decoder_args(s)
    s.set_defaults(func=_eval)

    s = sub.add_parser("transcribe", help="transcribe audio files with a checkpoint or ONNX model")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint (PyTorch)")
    src.add_argument("--onnx", help="a model from `speechswarm export` (onnxruntime, no torch)")
    s.add_argument(
        "files", nargs="+", help="audio files, or folders (their audio files at any depth)"
    )
    s.add_argument("--device", default="auto", help="PyTorch device (checkpoints only)")
    _add_precision_arg(s)
    s.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: the library's own)"
    )
    s.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="files per batch, grouped by length (output keeps the order given)",
    )
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.add_argument(
        "--stream",
        action="store_true",
        help="feed each file in chunks as a microphone would and print partial transcripts "
        "as they change (a streaming checkpoint: --config stream; docs/streaming.md)",
    )
    s.add_argument(
        "--chunk-ms", type=float, default=160.0, help="with --stream: milliseconds per chunk"
    )
    _add_decoder_args(s)
    s.set_defaults(func=_transcribe)

    s = sub.add_parser("lm", help="n-gram language models for beam search")
    lsub = s.add_subparsers(dest="action", required=True)
    t = lsub.add_parser("build", help="estimate a Kneser-Ney word n-gram LM (ARPA)")
    text = t.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help="a text file, one sentence per line (normalised here)")
    text.add_argument("--manifest", help="a manifest whose transcripts are the text")
    t.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="MANIFEST",
        help="drop sentences that are transcripts of this manifest (e.g. the test set); repeatable",
    )
    t.add_argument("--order", type=int, default=3)
    t.add_argument(
        "--prior",
        default=None,
        metavar="SPEC",
        help="words beyond the text, with frequencies: wordfreq:N (the N most frequent English "
        "words of the wordfreq package) or a file of `word<TAB>count` lines",
    )
    t.add_argument(
        "--prior-weight", type=float, default=0.5, help="the prior's share of the unigram base"
    )
    t.add_argument("--out", required=True, help="ARPA file to write (lm.arpa)")
    t.set_defaults(func=_lm_build)

    s = sub.add_parser("tune-lm", help="grid-search the LM weight (alpha) and word bonus (beta)")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--manifest", required=True, help="a dev manifest (not the test set)")
    s.add_argument("--lm", required=True)
    s.add_argument("--lexicon", default=None, help="word list for a binary KenLM file")
    s.add_argument("--alphas", default="0,0.25,0.5,0.75,1,1.5", help="comma-separated")
    s.add_argument("--betas", default="-1,0,1,2,3", help="comma-separated")
    s.add_argument("--beam-size", type=int, default=DecoderDefaults.beam_size)
    s.add_argument(
        "--by", choices=("wer", "cer"), default="wer", help="the metric the best point minimises"
    )
    s.add_argument("--device", default="auto")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=_tune_lm)

    s = sub.add_parser(
        "export", help="export a checkpoint to ONNX (waveform in) or safetensors (weights + JSON)"
    )
    s.add_argument("--checkpoint", required=True)
    s.add_argument(
        "--format",
        choices=("onnx", "safetensors"),
        default="onnx",
        help="onnx: the whole model incl. features, for onnxruntime; safetensors: the weights, "
        "and OUT with .json holding what rebuilds the model",
    )
    s.add_argument("--out", required=True, help="model.onnx or model.safetensors")
    s.add_argument(
        "--check",
        action="store_true",
        help="compare the exported model with PyTorch on random batches",
    )
    s.add_argument(
        "--quantize",
        choices=("int8",),
        default=None,
        help="also write OUT with .int8.onnx: dynamic int8 weights",
    )
    s.set_defaults(func=_export)

    s = sub.add_parser("average", help="average the weights of checkpoints of one run")
    s.add_argument("checkpoints", nargs="+", help="e.g. runs/x/checkpoints/step-*.pt (2 or more)")
    s.add_argument("--out", required=True, help="the averaged checkpoint (for eval, export, ...)")
    s.set_defaults(func=_average)

    s = sub.add_parser("demo", help="synthesise, train, evaluate on unseen voices, transcribe")
    s.add_argument("--out", default="runs/demo")
    s.add_argument("--data", default="data/synth")
    s.add_argument(
        "--minutes", type=float, default=None, help="training time budget (default: the demo's)"
    )
    s.set_defaults(func=_demo)

    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return p


class DecoderDefaults:
    # = speechswarm.decode.DecoderOptions' defaults; repeated so `--help` imports nothing.
    beam_size, alpha, beta = 64, 0.5, 1.0


def _add_precision_arg(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="PyTorch arithmetic (checkpoints only): auto = bf16 where the CPU or GPU has it",
    )


def _check_onnx_precision(args) -> None:
    if args.onnx and args.precision != "auto":
        raise UsageError("--precision applies to --checkpoint; ONNX models run in fp32")


def _add_decoder_args(s: argparse.ArgumentParser) -> None:
    g = s.add_argument_group("decoding")
    g.add_argument(
        "--decoder",
        choices=("greedy", "beam"),
        default=None,
        help="greedy (default) or beam search; --lm implies beam",
    )
    g.add_argument("--lm", default=None, help="word n-gram LM (ARPA, from `speechswarm lm build`)")
    g.add_argument("--lexicon", default=None, help="word list, needed with a binary KenLM file")
    g.add_argument("--beam-size", type=int, default=DecoderDefaults.beam_size)
    g.add_argument(
        "--alpha", type=float, default=DecoderDefaults.alpha, help="LM weight (tune-lm finds it)"
    )
    g.add_argument("--beta", type=float, default=DecoderDefaults.beta, help="bonus per word")


def _decoder_options(args):
    from speechswarm.decode import DecoderOptions

    return DecoderOptions.from_args(args)


def _synth(args) -> int:
    from speechswarm.data.prepare import synthesize_and_prepare

    synthesize_and_prepare(
        Path(args.out), hours=args.hours, seed=args.seed, workers=args.workers, text_file=args.text
    )
    return 0


def _prepare(args) -> int:
    if args.format == "clients":
        from speechswarm.data.prepare import prepare_clients

        if args.alphabet != "english":
            raise UsageError("--alphabet auto applies to corpus formats, not clients")
        prepare_clients(args.src, Path(args.out), digits=args.digits or "spell")
        return 0
    from speechswarm.data.prepare import prepare_manifest

    prepare_manifest(
        args.format,
        Path(args.src),
        Path(args.out),
        split=args.split,
        alphabet=args.alphabet,
        digits=args.digits,
        workers=args.workers,
        subsets=tuple(x for x in args.subsets.split(",") if x),
    )
    return 0


def _manifest_export(args) -> int:
    from speechswarm.data.prepare import export_manifest

    export_manifest(args.format, args.manifest, args.out)
    return 0


def _validate(args) -> int:
    from speechswarm.data.prepare import validate_manifest_cli

    return validate_manifest_cli(
        args.manifest, config=args.config, report_path=args.report, as_json=args.json
    )


def _tokenizer_train(args) -> int:
    from speechswarm.data.tokenizer import train_tokenizer

    train_tokenizer(args.manifest, args.vocab_size, args.out, model_type=args.model_type)
    return 0


def _shard(args) -> int:
    from speechswarm.data.manifest import read_manifest
    from speechswarm.data.shards import write_shards

    utts = read_manifest(args.manifest)
    paths = write_shards(utts, Path(args.out), shard_size=args.shard_size, workers=args.workers)
    index = json.loads((Path(args.out) / "shards.json").read_text())
    skipped = len(utts) - index["num_utts"]
    print(
        f"shards: {len(paths)} files, {index['num_utts']:,} utts -> {args.out}"
        + (f", {skipped:,} skipped (unreadable audio; listed in shards.json)" if skipped else "")
    )
    return 0


def _eval(args) -> int:
    from speechswarm.evaluate import evaluate_checkpoint, evaluate_onnx, format_report

    _check_onnx_precision(args)
    if args.onnx:
        result = evaluate_onnx(
            args.onnx,
            args.manifest,
            decoder=_decoder_options(args),
            utterances_out=args.utterances,
        )
    else:
        result = evaluate_checkpoint(
            args.checkpoint,
            args.manifest,
            device=args.device,
            precision=args.precision,
            batch_seconds=args.batch_seconds,
            decoder=_decoder_options(args),
            utterances_out=args.utterances,
        )
    if args.json:
        print(json.dumps(result.to_json(worst=args.worst)))
    else:
        print(format_report(result, worst=args.worst))
    return 0


def _transcribe(args) -> int:
    from speechswarm.transcribe import transcribe_files

    ok = transcribe_files(
        args.files,
        checkpoint=args.checkpoint,
        onnx=args.onnx,
        device=args.device,
        precision=args.precision,
        threads=args.threads,
        batch_size=args.batch_size,
        decoder=_decoder_options(args),
        as_json=args.json,
        stream=args.stream,
        chunk_ms=args.chunk_ms,
    )
    return 0 if ok else 1


def _lm_build(args) -> int:
    from speechswarm.decode.lm import build_lm_from

    build_lm_from(
        args.out,
        order=args.order,
        manifest=args.manifest,
        text=args.text,
        exclude=args.exclude,
        prior=args.prior,
        prior_weight=args.prior_weight,
    )
    return 0


def _tune_lm(args) -> int:
    from speechswarm.evaluate import tune_lm

    def floats(text: str, name: str) -> list[float]:
        try:
            return [float(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"--{name} must be comma-separated numbers, got {text!r}") from None

    def progress(done, total, p):
        print(
            f"  [{done}/{total}] alpha {p.alpha:g} beta {p.beta:g}: WER {p.wer:.2%} CER {p.cer:.2%}",
            file=sys.stderr,
        )

    points = tune_lm(
        args.checkpoint,
        args.manifest,
        args.lm,
        alphas=floats(args.alphas, "alphas"),
        betas=floats(args.betas, "betas"),
        beam_size=args.beam_size,
        lexicon=args.lexicon,
        device=args.device,
        progress=None if args.json else progress,
        by=args.by,
    )
    base, best = points[0], points[1]
    if args.json:
        print(
            json.dumps(
                {"greedy": vars(base), "best": vars(best), "grid": [vars(p) for p in points[1:]]}
            )
        )
        return 0
    print(f"greedy:            WER {base.wer:.2%}  CER {base.cer:.2%}")
    print(
        f"best beam + LM:    WER {best.wer:.2%}  CER {best.cer:.2%}  (alpha {best.alpha:g}, beta {best.beta:g})"
    )
    print(f"use: --decoder beam --lm {args.lm} --alpha {best.alpha:g} --beta {best.beta:g}")
    return 0


def _export(args) -> int:
    if args.format == "safetensors":
        from speechswarm.safetensors_export import export_safetensors, export_safetensors_checked

        if args.quantize:
            raise UsageError("--quantize applies to --format onnx")
        if args.check:
            return 0 if export_safetensors_checked(args.checkpoint, args.out) else 1
        export_safetensors(args.checkpoint, args.out)
        return 0
    from speechswarm.export import export_and_check

    ok = export_and_check(args.checkpoint, args.out, check=args.check, quantize=args.quantize)
    return 0 if ok else 1


def _average(args) -> int:
    from speechswarm.average import average_checkpoints

    average_checkpoints(args.checkpoints, args.out)
    return 0


def _demo(args) -> int:
    from speechswarm.demo import run_demo

    return run_demo(out_dir=Path(args.out), data_dir=Path(args.data), minutes=args.minutes)


if __name__ == "__main__":
    raise SystemExit(main())
