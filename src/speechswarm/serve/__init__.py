"""Transcription over HTTP: `speechswarm serve --checkpoint C [--lm LM] [--port P]`.

app.py        the Starlette application: POST /transcribe, GET /health, the page at /
batching.py   concurrent requests collected for a few ms and run as one padded batch
server.py     binding the port, uvicorn, a background server for tests and benchmarks
page.html     the upload / microphone page
cli.py        the command's arguments

docs/serving.md is the user's guide.
"""
