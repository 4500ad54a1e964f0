"""speechswarm: train DeepSpeech2-style CTC speech recognizers fast.

`speechswarm --help` lists the commands; `speechswarm.load(path).transcribe(audio)` is the
Python entry point for a trained model.
"""

__version__ = "0.1.0"


def load(path, *, device: str = "auto", precision: str = "auto", decoder=None):
    """Load a trained checkpoint; see `speechswarm.inference.Recognizer.transcribe`.

    `decoder`: None (greedy) or a `speechswarm.decode.DecoderOptions` (beam search, LM).
    """
    from speechswarm.inference import load as _load

    return _load(path, device=device, precision=precision, decoder=decoder)
