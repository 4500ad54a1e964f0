"""The `speechswarm` command: each subcommand parses its arguments and calls one library function.

speechswarm --help
speechswarm synth --out data/synth --hours 1
speechswarm train --config tiny train.out_dir=runs/mine
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

# Command groups that live beside the code they drive; each module has `add_parser(sub)`.
COMMAND_MODULES = ("speechswarm.train.cli",)

PREPARE_FORMATS = ("librispeech", "ljspeech", "userlibri", "commonvoice", "csv", "nemo", "clients")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not _is_user_error(e):
            raise
        # User-facing failures (bad paths, configs, data): one clear line, no traceback.
        print(f"speechswarm {args.command}: error: {e}", file=sys.stderr)
        return 1


def _is_user_error(e: Exception) -> bool:
    # Imported here, not at the top: `speechswarm --help` should not wait for torch.
    from speechswarm.data.audio import AudioError
    from speechswarm.train.checkpoint import CheckpointError

    return isinstance(e, (FileNotFoundError, ValueError, RuntimeError, CheckpointError, AudioError))


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
        "--digits",
        choices=("spell", "keep"),
        default="spell",
        help="spell out digits or keep them (validate flags them)",
    )
    s.add_argument("--workers", type=int, default=4, help="threads reading audio headers")
    s.set_defaults(func=_prepare)

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

    s = sub.add_parser("eval", help="WER/CER of a checkpoint on a manifest")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--manifest", required=True)
    s.add_argument("--device", default="auto")
    s.add_argument("--batch-seconds", type=float, default=160.0)
    s.add_argument("--worst", type=int, default=5, help="how many worst utterances to show")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=_eval)

    s = sub.add_parser("transcribe", help="transcribe audio files with a checkpoint")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("files", nargs="+")
    s.add_argument("--device", default="auto")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.set_defaults(func=_transcribe)

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


def _synth(args) -> int:
    from speechswarm.data.prepare import synthesize_and_prepare

    synthesize_and_prepare(
        Path(args.out), hours=args.hours, seed=args.seed, workers=args.workers, text_file=args.text
    )
    return 0


def _prepare(args) -> int:
    if args.format == "clients":
        from speechswarm.data.prepare import prepare_clients

        prepare_clients(args.src, Path(args.out), digits=args.digits)
        return 0
    from speechswarm.data.prepare import prepare_manifest

    prepare_manifest(
        args.format,
        Path(args.src),
        Path(args.out),
        split=args.split,
        digits=args.digits,
        workers=args.workers,
    )
    return 0


def _validate(args) -> int:
    from speechswarm.data.prepare import validate_manifest_cli

    return validate_manifest_cli(
        args.manifest, config=args.config, report_path=args.report, as_json=args.json
    )


def _tokenizer_train(args) -> int:
    from speechswarm.data.manifest import read_manifest
    from speechswarm.data.tokenizer import train_sentencepiece

    texts = [u.text for u in read_manifest(args.manifest)]
    tok = train_sentencepiece(texts, args.vocab_size, model_type=args.model_type)
    tok.save(args.out)
    print(
        f"tokenizer: {len(tok)} tokens (incl. blank) from {len(texts):,} transcripts -> {args.out}"
    )
    print(f"use it with: speechswarm train tokenizer.kind=sentencepiece tokenizer.path={args.out}")
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
    from speechswarm.evaluate import evaluate_checkpoint, format_report

    result = evaluate_checkpoint(
        args.checkpoint, args.manifest, device=args.device, batch_seconds=args.batch_seconds
    )
    if args.json:
        print(json.dumps(result.to_json(worst=args.worst)))
    else:
        print(format_report(result, worst=args.worst))
    return 0


def _transcribe(args) -> int:
    from speechswarm.data.audio import AudioError
    from speechswarm.inference import load

    asr = load(args.checkpoint, device=args.device)
    failed = 0
    for path in args.files:
        try:
            text = asr.transcribe(path)
        except AudioError as e:
            failed += 1
            line = {"file": path, "error": str(e)} if args.json else f"{path}\tERROR: {e}"
            print(
                json.dumps(line) if args.json else line,
                file=sys.stdout if args.json else sys.stderr,
            )
            continue
        print(json.dumps({"file": path, "text": text}) if args.json else f"{path}\t{text}")
    return 1 if failed == len(args.files) else 0


def _demo(args) -> int:
    from speechswarm.demo import run_demo

    return run_demo(out_dir=Path(args.out), data_dir=Path(args.data), minutes=args.minutes)


if __name__ == "__main__":
    raise SystemExit(main())
