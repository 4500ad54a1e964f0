"""Transcribe audio files with a checkpoint or an exported model: batched by length, in order.

    speechswarm transcribe --checkpoint runs/demo/checkpoints/best.pt a.flac recordings/
    speechswarm transcribe --onnx model.onnx --decoder beam --lm lm.arpa a.flac b.wav
    speechswarm transcribe --stream --checkpoint runs/stream/checkpoints/best.pt a.flac

`transcribe_files` is the command: it opens the model (`open_recognizer`), expands folders,
prints one line per file in the order given and a summary with the real-time factor.
`transcribe_paths` is the batching underneath, for any recognizer with `sample_rate` and
`transcribe_batch`. `stream_files` (--stream) feeds each file to a `StreamingRecognizer` in
chunks, as a microphone would, printing partial transcripts as they change. The ONNX path never imports torch: this module imports neither torch
nor `speechswarm.inference` at the top.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from speechswarm.data.audio import AudioError, audio_info, expand_audio_paths, load_audio
from speechswarm.decode import DecoderOptions
from speechswarm.decode.timestamps import TimedTranscript
from speechswarm.errors import UsageError

# (path, text (a TimedTranscript when timed) or None, audio seconds, AudioError or None)
Transcript = tuple[str, str | TimedTranscript | None, float, AudioError | None]


def open_recognizer(
    *,
    checkpoint: str | os.PathLike | None = None,
    onnx: str | os.PathLike | None = None,
    device: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    decoder: DecoderOptions | None = None,
) -> tuple[Any, str]:
    """(recognizer, what runs it) for a checkpoint (PyTorch) or an ONNX model
    (onnxruntime, torch never imported); `threads`: CPU threads, None for the library's
    default. `device` and `precision` apply to checkpoints only."""
    if (checkpoint is None) == (onnx is None):
        raise UsageError("transcribe: give a checkpoint or an ONNX model, not both or neither")
    if onnx is not None:
        if precision != "auto":
            raise UsageError("--precision applies to --checkpoint; ONNX models run in fp32")
        from speechswarm.onnx_runtime import OnnxRecognizer

        asr = OnnxRecognizer(onnx, decoder=decoder, threads=threads or 0)
        return asr, f"onnxruntime, threads={threads or 'default'}"
    from speechswarm.inference import load

    if threads:
        import torch

        torch.set_num_threads(threads)
    asr = load(checkpoint, device=device, precision=precision, decoder=decoder)
    return asr, f"PyTorch on {asr.device}, {asr.precision}"


def transcribe_paths(
    asr, paths: Sequence[str], batch_size: int, *, timed: bool = False
) -> Iterator[Transcript]:
    """Yield (path, text, audio seconds, error) for each of `paths`, in their order.

    `asr`: a `Recognizer` or `OnnxRecognizer`. Files are sorted by length (from their
    headers) and transcribed `batch_size` at a time, so a batch pads little; a result is
    yielded as soon as every earlier path has one. A file that cannot be read yields its
    AudioError (and None text) instead of stopping the others. `timed`: the text is a
    `TimedTranscript` (words with start, end, confidence: `asr.recognize_batch`)."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    results: dict[int, Transcript] = {}
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
        run = asr.recognize_batch if timed else asr.transcribe_batch
        texts = run(waves) if waves else []
        for i, wave, text in zip(group, waves, texts, strict=True):
            results[i] = (paths[i], text, len(wave) / asr.sample_rate, None)
        while emitted in results:
            yield results.pop(emitted)
            emitted += 1
    for i in sorted(results):  # left when no file's header could be read
        yield results[i]


def transcribe_files(
    files: Sequence[str],
    *,
    checkpoint: str | os.PathLike | None = None,
    onnx: str | os.PathLike | None = None,
    device: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    batch_size: int = 8,
    decoder: DecoderOptions | None = None,
    as_json: bool = False,
    stream: bool = False,
    chunk_ms: float = 160.0,
) -> bool:
    """`speechswarm transcribe`: print `path<TAB>text` (or one JSON object with the text,
    each word's start and end in seconds and confidence, and the duration) per file, in the
    order given, folders expanded to their audio files; a file that cannot be read prints
    its error (on stderr, or as a JSON "error") and the others go on. A summary with the
    real-time factor goes to stderr. Returns False when no file could be transcribed.
    `stream`: `stream_files` instead (a checkpoint only, no JSON)."""
    if stream:
        if onnx is not None or as_json:
            raise UsageError("--stream needs --checkpoint (PyTorch) and prints text, not --json")
        if device not in ("auto", "cpu") or precision not in ("auto", "fp32"):
            raise UsageError("--stream runs in fp32 on the CPU; drop --device / --precision")
        return stream_files(
            files, checkpoint=checkpoint, chunk_ms=chunk_ms, threads=threads, decoder=decoder
        )
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    decoder = decoder or DecoderOptions()
    asr, engine = open_recognizer(
        checkpoint=checkpoint,
        onnx=onnx,
        device=device,
        precision=precision,
        threads=threads,
        decoder=decoder,
    )
    paths = expand_audio_paths(list(files))
    failed, audio_seconds, start = 0, 0.0, time.perf_counter()
    for path, text, seconds, error in transcribe_paths(asr, paths, batch_size, timed=as_json):
        if error is not None:
            failed += 1
            if as_json:
                print(json.dumps({"file": path, "error": str(error)}))
            else:
                print(f"{path}\tERROR: {error}", file=sys.stderr)
            continue
        audio_seconds += seconds
        if as_json:  # {"file", "text", "words": [{"word", "start", "end", "confidence"}], ...}
            print(json.dumps({"file": path, **text.to_json()}))
        else:
            print(f"{path}\t{text}")
    busy = time.perf_counter() - start
    done = len(paths) - failed
    if done:
        print(
            f"transcribed {done} file(s), {audio_seconds:.1f} s of audio in {busy:.2f} s: "
            f"real-time factor {busy / max(audio_seconds, 1e-9):.4f} ({engine}, "
            f"{decoder.kind} decoding, batches of <= {batch_size})",
            file=sys.stderr,
        )
    return done > 0


def stream_files(
    files: Sequence[str],
    *,
    checkpoint: str | os.PathLike,
    chunk_ms: float = 160.0,
    threads: int | None = None,
    decoder: DecoderOptions | None = None,
) -> bool:
    """`speechswarm transcribe --stream`: feed each file in `chunk_ms` chunks (as fast as
    they compute, not at the speaking rate) and print `path<TAB>partial <audio s> s<TAB>text`
    whenever the partial transcript changes, then `path<TAB>text`, the final transcript, as
    without --stream. The summary on stderr has the real-time factor and the slowest chunk's
    compute time. Returns False when no file could be transcribed."""
    from speechswarm.streaming import StreamingRecognizer

    if not chunk_ms > 0:
        raise UsageError(f"--chunk-ms must be > 0, got {chunk_ms}")
    if threads:
        import torch

        torch.set_num_threads(threads)
    stream = StreamingRecognizer.load(checkpoint, decoder=decoder)
    chunk = max(1, round(stream.sample_rate * chunk_ms / 1000))  # samples
    paths = expand_audio_paths(list(files))
    done, audio_seconds, busy, slowest = 0, 0.0, 0.0, 0.0
    for path in paths:
        try:
            wave = load_audio(path, stream.sample_rate)
        except AudioError as e:
            print(f"{path}\tERROR: {e}", file=sys.stderr)
            continue
        shown = ""
        for first in range(0, len(wave), chunk):
            start = time.perf_counter()
            partial = stream.feed(wave[first : first + chunk])
            took = time.perf_counter() - start
            busy, slowest = busy + took, max(slowest, took)
            if partial != shown:
                heard = min(first + chunk, len(wave)) / stream.sample_rate
                print(f"{path}\tpartial {heard:.2f} s\t{partial}", flush=True)
                shown = partial
        start = time.perf_counter()
        text = stream.finish()
        busy += time.perf_counter() - start
        print(f"{path}\t{text}", flush=True)
        done, audio_seconds = done + 1, audio_seconds + len(wave) / stream.sample_rate
    if done:
        print(
            f"streamed {done} file(s), {audio_seconds:.1f} s of audio in {busy:.2f} s of "
            f"compute: real-time factor {busy / max(audio_seconds, 1e-9):.4f}; chunks of "
            f"{chunk_ms:g} ms, the slowest took {slowest * 1000:.1f} ms (PyTorch on cpu, fp32, "
            f"right context {stream.right_context} feature frames)",
            file=sys.stderr,
        )
    return done > 0
