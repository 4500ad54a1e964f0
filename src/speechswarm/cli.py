"""The `speechswarm` command: each subcommand parses its arguments and calls one library function.

speechswarm --help
speechswarm synth --out data/synth --hours 1
speechswarm train --config tiny train.out_dir=runs/mine
speechswarm lm build --manifest data/synth/train.jsonl --order 3 --out lm.arpa
speechswarm export --checkpoint runs/mine/checkpoints/best.pt --out model.onnx --check
speechswarm transcribe --onnx model.onnx --decoder beam --lm lm.arpa a.flac b.flac
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

# Command groups that live beside the code they drive; each module has `add_parser(sub)`.
COMMAND_MODULES = (
    "speechswarm.train.cli",
    "speechswarm.distributed.cli",
    "speechswarm.p2p.cli",
    "speechswarm.p2p.net.cli",
    "speechswarm.benchmark.cli",
)

PREPARE_FORMATS = ("librispeech", "ljspeech", "userlibri", "commonvoice", "csv", "nemo", "clients")


def main(argv: list[str] | None = None) -> int:
    return run(_parser(), argv)


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse `argv`, call the chosen command; user errors become one line and exit code 1."""
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
    # Imported here, not at the top: `speechswarm --help` should not wait for torch. A
    # CheckpointError exists only once torch is loaded; `transcribe --onnx` never loads it.
    from speechswarm.data.audio import AudioError

    kinds: tuple[type, ...] = (FileNotFoundError, ValueError, RuntimeError, AudioError)
    if "speechswarm.checkpoint" in sys.modules:
        kinds += (sys.modules["speechswarm.checkpoint"].CheckpointError,)
    return isinstance(e, kinds)


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
    s.add_argument("--device", default="auto")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=_tune_lm)

    s = sub.add_parser("export", help="export a checkpoint to ONNX (waveform in, log-probs out)")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--out", required=True, help="model.onnx")
    s.add_argument(
        "--check", action="store_true", help="compare onnxruntime with PyTorch on random batches"
    )
    s.add_argument(
        "--quantize",
        choices=("int8",),
        default=None,
        help="also write OUT with .int8.onnx: dynamic int8 weights",
    )
    s.set_defaults(func=_export)

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
        raise ValueError("--precision applies to --checkpoint; ONNX models run in fp32")


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

    kind = args.decoder or ("beam" if args.lm else "greedy")
    if args.lm and kind == "greedy":
        raise ValueError("--lm needs beam search: drop --decoder greedy or use --decoder beam")
    return DecoderOptions(
        kind,
        lm=args.lm,
        lexicon=args.lexicon,
        beam_size=args.beam_size,
        alpha=args.alpha,
        beta=args.beta,
    )


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
    from speechswarm.evaluate import evaluate_checkpoint, evaluate_onnx, format_report

    _check_onnx_precision(args)
    if args.onnx:
        result = evaluate_onnx(args.onnx, args.manifest, decoder=_decoder_options(args))
    else:
        result = evaluate_checkpoint(
            args.checkpoint,
            args.manifest,
            device=args.device,
            precision=args.precision,
            batch_seconds=args.batch_seconds,
            decoder=_decoder_options(args),
        )
    if args.json:
        print(json.dumps(result.to_json(worst=args.worst)))
    else:
        print(format_report(result, worst=args.worst))
    return 0


def _transcribe(args) -> int:
    import time

    _check_onnx_precision(args)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    options = _decoder_options(args)
    if args.onnx:  # onnxruntime only: nothing on this path imports torch
        from speechswarm.onnx_runtime import OnnxRecognizer

        asr = OnnxRecognizer(args.onnx, decoder=options, threads=args.threads or 0)
        engine = f"onnxruntime, threads={args.threads or 'default'}"
    else:
        from speechswarm.inference import load

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        asr = load(args.checkpoint, device=args.device, precision=args.precision, decoder=options)
        engine = f"PyTorch on {asr.device}, {asr.precision}"
    from speechswarm.data.audio import expand_audio_paths

    files = expand_audio_paths(args.files)
    failed, audio_seconds, start = 0, 0.0, time.perf_counter()
    for path, text, seconds, error in transcribe_files(asr, files, args.batch_size):
        if error is not None:
            failed += 1
            line = {"file": path, "error": str(error)} if args.json else f"{path}\tERROR: {error}"
            print(
                json.dumps(line) if args.json else line,
                file=sys.stdout if args.json else sys.stderr,
            )
            continue
        audio_seconds += seconds
        print(json.dumps({"file": path, "text": text}) if args.json else f"{path}\t{text}")
    busy = time.perf_counter() - start
    done = len(files) - failed
    if done:
        print(
            f"transcribed {done} file(s), {audio_seconds:.1f} s of audio in {busy:.2f} s: "
            f"real-time factor {busy / max(audio_seconds, 1e-9):.4f} ({engine}, "
            f"{options.kind} decoding, batches of <= {args.batch_size})",
            file=sys.stderr,
        )
    return 1 if failed == len(files) else 0


def transcribe_files(asr, paths: list[str], batch_size: int):
    """Yield (path, text, audio seconds, error) for each of `paths`, in their order.

    `asr`: a `Recognizer` or `OnnxRecognizer`. Files are sorted by length (from their
    headers) and transcribed `batch_size` at a time, so a batch pads little; a result is
    yielded as soon as every earlier path has one. A file that cannot be read yields its
    AudioError (and None text) instead of stopping the others."""
    from speechswarm.data.audio import AudioError, audio_info, load_audio

    results: dict[int, tuple] = {}
    lengths: dict[int, float] = {}
    for i, path in enumerate(paths):
        try:
            rate, frames, _ = audio_info(path)
            lengths[i] = frames / rate
        except AudioError as e:
            results[i] = (path, None, 0.0, e)
    order = sorted(lengths, key=lengths.__getitem__)
    emitted = 0
    for first in range(0, len(order), batch_size):
        group, waves = [], []
        for i in order[first : first + batch_size]:
            try:
                waves.append(load_audio(paths[i], asr.sample_rate))
                group.append(i)
            except AudioError as e:  # a header that reads, samples that do not
                results[i] = (paths[i], None, 0.0, e)
        texts = asr.transcribe_batch(waves) if waves else []
        for i, wave, text in zip(group, waves, texts, strict=True):
            results[i] = (paths[i], text, len(wave) / asr.sample_rate, None)
        while emitted in results:
            yield results.pop(emitted)
            emitted += 1
    for i in sorted(results):  # left when no file's header could be read
        yield results[i]


def _lm_build(args) -> int:
    import time

    from speechswarm.data.manifest import read_manifest
    from speechswarm.data.text import normalize_text
    from speechswarm.decode.lm import build_lm, lm_sentences

    if args.manifest:
        texts = [u.text for u in read_manifest(args.manifest)]
        source = args.manifest
    else:
        path = Path(args.text)
        if not path.is_file():
            raise FileNotFoundError(f"lm build: text file {path} does not exist")
        texts = [normalize_text(line) for line in path.read_text(encoding="utf-8").splitlines()]
        source = args.text
    exclude = [u.text for m in args.exclude for u in read_manifest(m)]
    sentences, dropped = lm_sentences(texts, exclude)
    start = time.perf_counter()
    model = build_lm(sentences, args.order, args.out)
    sizes = ", ".join(f"{len(level):,} {n}-grams" for n, level in enumerate(model.log10_probs, 1))
    print(
        f"lm: order {args.order} from {len(sentences):,} sentences of {source}"
        + (f" ({dropped:,} excluded)" if dropped else "")
        + f": {sizes} -> {args.out} ({time.perf_counter() - start:.1f} s)"
    )
    if model.fallback_orders:
        print(
            f"lm: orders {list(model.fallback_orders)} had too little text for estimated "
            "discounts; used 0.5/1/1.5 (more text gives a better model)",
            file=sys.stderr,
        )
    return 0


def _tune_lm(args) -> int:
    from speechswarm.evaluate import tune_lm

    def floats(text: str, name: str) -> list[float]:
        try:
            return [float(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--{name} must be comma-separated numbers, got {text!r}") from None

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
    import time

    from speechswarm.export import PARITY_BOUND, check_parity, export_onnx, quantize_int8

    start = time.perf_counter()
    out = export_onnx(args.checkpoint, args.out)
    print(
        f"export: {args.checkpoint} -> {out} ({out.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - start:.1f} s)"
    )
    paths = [out]
    if args.quantize:
        q = quantize_int8(out, out.with_suffix(".int8.onnx"))
        print(f"export: int8 dynamic quantisation -> {q} ({q.stat().st_size / 1e6:.1f} MB)")
        paths.append(q)
    if not args.check:
        return 0
    status = 0
    for path in paths:
        r = check_parity(path, args.checkpoint)
        verdict = "ok" if r.ok else "FAILED"
        if path != out:  # int8 weights move log-probs by design: its cost is WER (eval --onnx)
            verdict = "int8, not bounded; measure its WER with `speechswarm eval --onnx`"
        print(
            f"check {path.name}: onnxruntime vs PyTorch on {r.utterances} random utterances in "
            f"{r.batches} batches: max |log-prob diff| {r.max_abs_diff:.2e} (bound "
            f"{PARITY_BOUND:.0e}), lengths {'equal' if r.lengths_match else 'DIFFER'}: {verdict}"
        )
        status |= int(not r.ok and path == out)
    return status


def _demo(args) -> int:
    from speechswarm.demo import run_demo

    return run_demo(out_dir=Path(args.out), data_dir=Path(args.data), minutes=args.minutes)


if __name__ == "__main__":
    raise SystemExit(main())
