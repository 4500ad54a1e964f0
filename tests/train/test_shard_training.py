"""Training that streams from TAR shards (data.shards) instead of a manifest."""

import pytest

from speechswarm.checkpoint import load_checkpoint
from speechswarm.data.manifest import read_manifest
from speechswarm.data.shards import write_shards
from speechswarm.train.loop import train


def test_training_streams_from_shards_and_resumes_mid_epoch(synth_corpus, make_config, tmp_path):
    utts = read_manifest(synth_corpus.few)
    write_shards(utts, tmp_path / "shards", shard_size=2, workers=1, progress=False)
    shards = f"data.shards={tmp_path / 'shards'}"
    # 6 utterances at most 2 per batch: 3 batches per epoch, estimated from shards.json.
    cfg = make_config(shards, "data.max_batch_size=2", "train.epochs=2", manifest=synth_corpus.few)
    result = train(cfg, progress=False)
    assert result.stop_reason == "epochs"
    assert result.state.step == 6  # 2 epochs x 3 batches: every utterance once per epoch
    assert result.state.audio_seconds == pytest.approx(2 * sum(u.duration for u in utts), rel=1e-3)

    # Interrupted after 4 steps (mid-epoch 1), resumed: ends with the same weights.
    cut = make_config(
        shards, "data.max_batch_size=2", "train.epochs=2", manifest=synth_corpus.few, name="cut"
    )
    train(cut, progress=False, should_stop=lambda s: s.step == 4)
    resumed = train(cut, progress=False, resume="auto")
    assert resumed.state.step == 6
    full = load_checkpoint(result.run_dir / "checkpoints/last.pt")["model"]
    again = load_checkpoint(resumed.run_dir / "checkpoints/last.pt")["model"]
    assert all((full[k] == again[k]).all() for k in full)


def test_missing_shard_index_is_a_clear_error(synth_corpus, make_config, tmp_path):
    cfg = make_config(f"data.shards={tmp_path / 'nowhere'}", manifest=synth_corpus.few)
    with pytest.raises(FileNotFoundError, match="speechswarm shard"):
        train(cfg, progress=False)
