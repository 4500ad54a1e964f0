"""A tiny HTTP client for the server tests and the benchmark: stdlib only."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid


def request(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    """(status, JSON body) of a GET (data None) or POST; 4xx/5xx answers are returned too."""
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, dict]:
    """(body, headers) of a multipart/form-data upload of one file."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
