"""`speechswarm serve`: transcription over HTTP, with an upload page.

speechswarm serve --checkpoint runs/demo/checkpoints/last.pt              # 127.0.0.1:8000
speechswarm serve --checkpoint last.pt --lm runs/demo/lm.arpa --port 9000
python -m speechswarm.serve --checkpoint last.pt                         # the same
"""

from __future__ import annotations


def add_parser(sub) -> None:
    s = sub.add_parser("serve", help="serve transcription over HTTP (JSON API and upload page)")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint (PyTorch)")
    src.add_argument("--onnx", help="a model from `speechswarm export` (onnxruntime)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    s.add_argument("--port", type=int, default=8000, help="TCP port (0: any free one)")
    s.add_argument("--device", default="auto", help="PyTorch device (checkpoints only)")
    s.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="PyTorch arithmetic (checkpoints only): auto = bf16 where the CPU or GPU has it",
    )
    s.add_argument("--threads", type=int, default=None, help="CPU threads of the model")
    s.add_argument(
        "--max-bytes", type=int, default=20_000_000, help="largest request body (413 above)"
    )
    s.add_argument(
        "--max-seconds", type=float, default=60.0, help="longest audio per request (413 above)"
    )
    s.add_argument("--max-batch", type=int, default=8, help="most requests run as one batch")
    s.add_argument(
        "--max-wait-ms",
        type=float,
        default=10.0,
        help="how long a request waits for others to batch with (ms)",
    )
    s.add_argument(
        "--max-streams",
        type=int,
        default=8,
        help="most WebSocket streams open at once (/stream; models trained with --config stream)",
    )
    g = s.add_argument_group("decoding")
    g.add_argument("--decoder", choices=("greedy", "beam"), default=None, help="--lm implies beam")
    g.add_argument("--lm", default=None, help="word n-gram LM (ARPA, from `speechswarm lm build`)")
    g.add_argument("--lexicon", default=None, help="word list, needed with a binary KenLM file")
    g.add_argument("--beam-size", type=int, default=64)
    g.add_argument("--alpha", type=float, default=0.5, help="LM weight (tune-lm finds it)")
    g.add_argument("--beta", type=float, default=1.0, help="bonus per word")
    s.set_defaults(func=_serve)


def _serve(args) -> int:
    from speechswarm.decode import DecoderOptions
    from speechswarm.errors import UnavailableError

    try:
        import websockets  # noqa: F401  (uvicorn's WebSocket protocol, for /stream)

        from speechswarm.serve.app import Limits
        from speechswarm.serve.server import serve_checkpoint
    except ModuleNotFoundError as e:
        if e.name not in ("starlette", "uvicorn", "multipart", "python_multipart", "websockets"):
            raise
        raise UnavailableError(
            f"speechswarm serve needs {e.name}: pip install 'speechswarm[serve]'"
        ) from None

    decoder = DecoderOptions.from_args(args)
    serve_checkpoint(
        args.checkpoint,
        onnx=args.onnx,
        host=args.host,
        port=args.port,
        device=args.device,
        precision=args.precision,
        threads=args.threads,
        decoder=decoder,
        limits=Limits(args.max_bytes, args.max_seconds),
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_streams=args.max_streams,
    )
    return 0
