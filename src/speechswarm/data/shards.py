"""TAR shards for streaming big corpora: write once, read sequentially from any filesystem.

    speechswarm shard data/train.jsonl --out data/train_shards --shard-size 1000

`write_shards` packs utterances into WebDataset-compatible tars (`shard-000000.tar`, ...):
each utterance is `<key>.flac` (16-bit mono FLAC at the corpus rate) plus `<key>.json` (its
manifest record; `id` keeps the original id, `duration` is the stored audio's). Keys are the
ids made tar/WebDataset-safe (no dots: WebDataset splits a key at its first dot). Shards are
written in parallel, each to a temporary name renamed when complete, and listed with counts
and durations in `shards.json`.

`ShardDataset` streams Samples (as `SpeechDataset` makes) from the shards, split by DDP rank
and DataLoader worker; `ShardBatches` + `make_loader(..., None)` batch them by length.
Nothing is ever extracted to disk: members are read into memory. A shard is refused whole
(ShardError) when a member is not a plain file or folder entry (a symlink, hard link, device
or FIFO), when its name is absolute or climbs out with `..`, or when one member is larger
than `MAX_MEMBER_BYTES`; `speechswarm shard` writes none of those. A sample whose record is
not a JSON object with a text is skipped and logged, like one whose audio does not decode.
Caveat for DDP: streaming cannot promise every rank the same number of batches (DDP would
hang at the end of an epoch); use equal-sized shards, a shard count divisible by
world_size x workers, or the manifest path (BucketBatchSampler) for multi-GPU training.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import IterableDataset, get_worker_info
from tqdm import tqdm

from speechswarm.atomic import atomic_open, temp_beside
from speechswarm.data.audio import AudioError, load_audio_bytes, read_audio, to_mono_rate
from speechswarm.data.dataset import Sample, collate
from speechswarm.data.manifest import Utterance, utterance_to_json
from speechswarm.data.sampler import pack_batches
from speechswarm.errors import DataError, InputNotFoundError, SpeechswarmError, UsageError

log = logging.getLogger(__name__)


class ShardError(SpeechswarmError, RuntimeError):
    """A shard file that cannot be read as a TAR archive; the message says to rebuild it."""


INDEX_NAME = "shards.json"
_SAFE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# The largest member read into memory: an hour of 16 kHz 16-bit audio is 115 MB as WAV
# (`data.audio.MAX_AUDIO_SECONDS`); a header claiming more is not an utterance.
MAX_MEMBER_BYTES = 1 << 30


def shard_key(utt_id: str) -> str:
    """A tar/WebDataset-safe key for an id: the id itself when it is only [A-Za-z0-9_-],
    else the id with other characters as "_" plus 8 hex digits of its SHA-1 (stays unique)."""
    if _SAFE_KEY.fullmatch(utt_id):
        return utt_id
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "_", utt_id)[:80]
    return f"{cleaned}_{hashlib.sha1(utt_id.encode()).hexdigest()[:8]}"


def write_shards(
    utts: Sequence[Utterance],
    out_dir: str | os.PathLike,
    *,
    shard_size: int = 1000,
    workers: int = 2,
    sample_rate: int = 16000,
    progress: bool = True,
) -> list[Path]:
    """Write `utts` into tar shards of `shard_size` utterances under `out_dir`; return the
    shard paths in order. Utterances whose audio fails to load are skipped, logged and listed
    in the index's "skipped". Raises DataError on duplicate ids (run `speechswarm validate`).
    """
    utts = list(utts)
    if not utts:
        raise DataError("write_shards: no utterances to write")
    if shard_size < 1:
        raise UsageError(f"shard_size must be >= 1, got {shard_size}")
    keys = [shard_key(u.id) for u in utts]
    counts = Counter(keys)
    if len(counts) != len(keys):
        dup = next(u.id for u, k in zip(utts, keys, strict=True) if counts[k] > 1)
        raise DataError(f"duplicate utterance id {dup!r}; run `speechswarm validate` first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        (
            out / f"shard-{i:06d}.tar",
            list(zip(keys[s : s + shard_size], utts[s : s + shard_size], strict=True)),
        )
        for i, s in enumerate(range(0, len(utts), shard_size))
    ]
    results = {}
    with (
        tqdm(total=len(utts), unit="utt", desc="shards", disable=not progress) as bar,
        ThreadPoolExecutor(max(1, workers)) as pool,  # libsndfile/soxr release the GIL
    ):
        futures = {
            pool.submit(_write_shard, path, items, sample_rate): path for path, items in jobs
        }
        for future in as_completed(futures):
            result = future.result()
            results[futures[future]] = result
            bar.update(result["num_utts"] + len(result["skipped"]))
    _write_index(out, [results[path] for path, _ in jobs], sample_rate)
    return [path for path, _ in jobs]


def _write_shard(path: Path, items: list[tuple[str, Utterance]], sample_rate: int) -> dict:
    """One shard, written to a temporary file and renamed: readers never see half a tar."""
    count, seconds, skipped = 0, 0.0, []
    fd, tmp = temp_beside(path)
    try:
        with (
            os.fdopen(fd, "wb") as f,
            tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for key, utt in items:
                try:
                    flac, frames = _flac_bytes(utt, sample_rate)
                except AudioError as e:
                    log.warning("shards: skipping utterance %s: %s", utt.id, e)
                    skipped.append({"id": utt.id, "reason": e.reason, "detail": e.detail})
                    continue
                record = utterance_to_json(utt)
                record.update(audio=f"{key}.flac", duration=frames / sample_rate, offset=0.0)
                record.update(source_audio=utt.audio, source_offset=utt.offset)
                _add_member(tar, f"{key}.flac", flac)
                _add_member(tar, f"{key}.json", json.dumps(record, ensure_ascii=False).encode())
                count, seconds = count + 1, seconds + frames / sample_rate
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"path": path.name, "num_utts": count, "duration": round(seconds, 3), "skipped": skipped}


def _flac_bytes(utt: Utterance, sample_rate: int) -> tuple[bytes, int]:
    """(FLAC file bytes, frames) of the utterance's audio: the original file's bytes when it
    is already a whole mono FLAC at `sample_rate`, else decoded and re-encoded as PCM_16."""
    data, file_rate = read_audio(utt.audio, utt.offset, utt.duration)  # also checks it decodes
    info = sf.info(utt.audio)
    if (
        info.format == "FLAC"
        and file_rate == sample_rate
        and data.shape[1] == 1
        and utt.offset == 0
        and len(data) == info.frames
    ):
        return Path(utt.audio).read_bytes(), len(data)
    wave = to_mono_rate(data, file_rate, sample_rate)
    buf = io.BytesIO()
    # 16-bit holds [-1, 32767/32768]: clip here rather than rely on libsndfile's setting
    sf.write(buf, np.clip(wave, -1.0, 32767 / 32768), sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue(), len(wave)


def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(payload), 0o644, 0  # mtime 0: reproducible bytes
    tar.addfile(info, io.BytesIO(payload))


def _write_index(out: Path, shards: list[dict], sample_rate: int) -> None:
    skipped = [s for shard in shards for s in shard.pop("skipped")]
    index = {
        "sample_rate": sample_rate,
        "num_utts": sum(s["num_utts"] for s in shards),
        "total_duration": round(sum(s["duration"] for s in shards), 3),
        "shards": shards,
        "skipped": skipped,
    }
    with atomic_open(out / INDEX_NAME) as f:
        json.dump(index, f, indent=1, ensure_ascii=False)


def resolve_shards(shards: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Shard paths from a folder (its shards.json, else shard-*.tar sorted), a tar, or a list."""
    if isinstance(shards, (str, os.PathLike)):
        path = Path(shards)
        if path.is_dir():
            if (path / INDEX_NAME).is_file():
                return [path / s["path"] for s in read_index(path)["shards"]]
            found = sorted(path.glob("shard-*.tar"))
            if not found:
                raise InputNotFoundError(
                    f"no shards in {path}; write them with `speechswarm shard`"
                )
            return found
        shards = [path]
    paths = [Path(p) for p in shards]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputNotFoundError(f"shard(s) {missing[:3]} do not exist; check data.shards")
    return paths


def read_index(folder: str | os.PathLike) -> dict:
    """The folder's shards.json, checked: every shard a plain file name in the folder (an
    entry such as "../x.tar" or "/data/x.tar" is refused), counts and durations numbers."""
    path = Path(folder) / INDEX_NAME
    try:
        index = json.loads(path.read_bytes())
        shards = index["shards"]
        names = [s["path"] for s in shards]
        numbers = [index["num_utts"], index["total_duration"]]
    except (ValueError, KeyError, TypeError) as e:  # JSON, UTF-8, a missing key, a non-dict
        raise ShardError(
            f"{path} is not a shard index ({type(e).__name__}: {e}); rewrite the shards with "
            "`speechswarm shard`"
        ) from e
    for name in names:
        if not (isinstance(name, str) and _is_plain_name(name)):
            raise ShardError(
                f"{path}: shard {name!r} is not a file name inside {Path(folder)}; an index "
                "lists its own folder's shards only (rewrite it with `speechswarm shard`)"
            )
    if not all(type(n) in (int, float) and n >= 0 for n in numbers):
        raise ShardError(f"{path}: num_utts and total_duration must be numbers >= 0")
    return index


def _is_plain_name(name: str) -> bool:
    return name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


def iter_shard(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample of one tar, read as a stream; a sample's files
    are consecutive members, as WebDataset requires. Raises ShardError on a damaged tar and
    on a member that is not a plain file inside the archive (`_check_member`)."""
    key, files = None, {}
    try:
        with tarfile.open(path, mode="r|") as tar:
            for member in tar:
                if not _check_member(path, member):
                    continue
                base = member.name.rsplit("/", 1)[-1]
                k, _, ext = base.partition(".")
                if k != key and files:
                    yield key, files
                    files = {}
                key = k
                files[ext] = tar.extractfile(member).read()
    except tarfile.TarError as e:
        raise ShardError(
            f"shard {path} is damaged ({e}); rebuild it with `speechswarm shard`"
        ) from e
    if files:
        yield key, files


def _check_member(path: Path, member: tarfile.TarInfo) -> bool:
    """True for a file member to read, False for a folder entry to skip; ShardError for a
    link, device or FIFO, a name that is absolute or climbs out with "..", or a size over
    MAX_MEMBER_BYTES. Nothing is extracted here, but such members are how extracting a tar
    writes outside its folder (tar-slip): a shard holding one was not written by us."""
    name = member.name.replace("\\", "/")
    why = ""
    if member.issym() or member.islnk():
        why = f"is a {'symbolic' if member.issym() else 'hard'} link to {member.linkname!r}"
    elif not (member.isfile() or member.isdir()):
        why = "is a device, FIFO or other special file"
    elif name.startswith("/") or re.match(r"[A-Za-z]:", name):
        why = "has an absolute name"
    elif ".." in name.split("/"):
        why = "climbs out of the archive with '..'"
    elif member.size > MAX_MEMBER_BYTES:
        why = f"claims {member.size:,} bytes (more than {MAX_MEMBER_BYTES:,})"
    if why:
        raise ShardError(
            f"shard {path}: member {member.name!r} {why}; shards hold only plain files named "
            "inside the archive (refused whole; rebuild it with `speechswarm shard`)"
        )
    return member.isfile()


class ShardDataset(IterableDataset):
    """Streams Samples from TAR shards; each (rank, worker) reads its own shards.

    In epoch e the shard list is shuffled by (seed, e) (when shuffle_shards) and the shard at
    position i goes to rank i % world_size and, within that rank, to DataLoader worker
    (i // world_size) % num_workers: a partition, so every shard is read once per epoch.
    shuffle_buffer > 0 shuffles samples through a buffer of that many (memory: that many
    decoded waves). Raises DataError when there are fewer shards than ranks.
    """

    def __init__(
        self,
        shards: str | os.PathLike | Sequence[str | os.PathLike],
        tokenizer,
        sample_rate: int = 16000,
        rank: int = 0,
        world_size: int = 1,
        shuffle_shards: bool = True,
        shuffle_buffer: int = 0,
        seed: int = 0,
    ):
        self.shards = resolve_shards(shards)
        if len(self.shards) < world_size:
            raise DataError(
                f"{len(self.shards)} shards cannot be shared by {world_size} ranks; write more, "
                "smaller shards (speechswarm shard --shard-size)"
            )
        self.tokenizer, self.sample_rate = tokenizer, int(sample_rate)
        self.rank, self.world_size = rank, world_size
        self.shuffle_shards, self.shuffle_buffer, self.seed = shuffle_shards, shuffle_buffer, seed
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()  # seen by workers

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = int(epoch)

    def my_shards(self, worker_id: int = 0, num_workers: int = 1) -> list[Path]:
        """The shards this rank's worker `worker_id` (of `num_workers`) reads this epoch."""
        epoch = int(self._epoch[0])
        order = np.arange(len(self.shards))
        if self.shuffle_shards:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        return [self.shards[i] for i in order[self.rank :: self.world_size][worker_id::num_workers]]

    def __iter__(self) -> Iterator[Sample]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        samples = self._samples(self.my_shards(wid, nw))
        if self.shuffle_buffer > 0:
            rng = np.random.default_rng([self.seed, int(self._epoch[0]), self.rank, wid])
            samples = _buffer_shuffle(samples, self.shuffle_buffer, rng)
        yield from samples

    def _samples(self, paths: list[Path]) -> Iterator[Sample]:
        for path in paths:
            for key, files in iter_shard(path):
                if "flac" not in files or "json" not in files:
                    log.warning("shard %s: sample %s lacks .flac or .json; skipped", path, key)
                    continue
                record = _record(files["json"])
                if record is None:
                    log.warning(
                        "shard %s: sample %s: .json is not a record with a text; skipped", path, key
                    )
                    continue
                try:
                    wave = load_audio_bytes(files["flac"], self.sample_rate, f"{path}:{key}.flac")
                except AudioError as e:
                    log.warning("skipping utterance %s: %s", record.get("id", key), e)
                    continue
                tokens = torch.tensor(self.tokenizer.encode(record["text"]), dtype=torch.int64)
                yield Sample(str(record.get("id", key)), torch.from_numpy(wave), tokens)


def _record(data: bytes) -> dict | None:
    """A sample's .json as a dict with a string "text", or None (not UTF-8 JSON, no text)."""
    try:
        record = json.loads(data)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None
    return record if isinstance(record, dict) and isinstance(record.get("text"), str) else None


def _buffer_shuffle(items: Iterable, size: int, rng: np.random.Generator) -> Iterator:
    buffer = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            yield buffer.pop(int(rng.integers(len(buffer))))
    rng.shuffle(buffer)
    yield from buffer


def batch_stream(
    samples: Iterable[Sample],
    max_batch_seconds: float,
    *,
    max_batch_size: int | None = None,
    buffer_size: int = 1000,
    sample_rate: int = 16000,
) -> Iterator[list[Sample]]:
    """Length-bucketed batches from a stream: fill a buffer of `buffer_size` samples, sort it
    by length, pack it with the sampler's padded-cost rule (max seconds x size <=
    `max_batch_seconds`), emit those batches, repeat. Memory: `buffer_size` waves."""
    buffer: list[Sample] = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) >= buffer_size:
            yield from _pack(buffer, max_batch_seconds, max_batch_size, sample_rate)
            buffer = []
    if buffer:
        yield from _pack(buffer, max_batch_seconds, max_batch_size, sample_rate)


def _pack(
    buffer: list[Sample], max_batch_seconds, max_batch_size, sample_rate
) -> Iterator[list[Sample]]:
    seconds = [len(s.wave) / sample_rate for s in buffer]
    order = sorted(range(len(buffer)), key=seconds.__getitem__)
    for batch in pack_batches(order, seconds, max_batch_seconds, max_batch_size):
        yield [buffer[i] for i in batch]


class ShardBatches(IterableDataset):
    """Collated Batches from a ShardDataset via `batch_stream`, made inside each loader
    worker: `make_loader(ShardBatches(shards, 160.0), None, num_workers=2)`."""

    def __init__(
        self,
        samples: ShardDataset,
        max_batch_seconds: float,
        *,
        max_batch_size: int | None = None,
        buffer_size: int = 1000,
    ):
        self.samples, self.max_batch_seconds = samples, max_batch_seconds
        self.max_batch_size, self.buffer_size = max_batch_size, buffer_size

    def set_epoch(self, epoch: int) -> None:
        self.samples.set_epoch(epoch)

    def __iter__(self):
        stream = batch_stream(
            self.samples,
            self.max_batch_seconds,
            max_batch_size=self.max_batch_size,
            buffer_size=self.buffer_size,
            sample_rate=self.samples.sample_rate,
        )
        for samples in stream:
            yield collate(samples)
