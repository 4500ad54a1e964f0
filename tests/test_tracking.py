"""MLflow tracking (train.tracking=mlflow): the same metrics as metrics.jsonl, the resolved
config as parameters, one MLflow run continued by --resume; a clear error without MLflow.

    .venv/bin/python -m pytest tests/test_tracking.py -q
"""

from __future__ import annotations

import json
import sys

import pytest

from speechswarm.errors import UnavailableError
from speechswarm.report import read_metrics
from speechswarm.tracking import flat_params, open_tracking
from speechswarm.train.loop import train


def test_flat_params_names_each_key_by_its_path():
    tree = {"optim": {"lr": 0.001, "betas": [0.9, 0.99]}, "p2p": {"runs": ["x" * 900]}}
    flat = flat_params(tree)
    assert flat["optim.lr"] == "0.001" and flat["optim.betas"] == "[0.9, 0.99]"
    assert len(flat["p2p.runs"]) == 500


def test_a_tracked_run_mirrors_metrics_jsonl_and_resumes_the_same_mlflow_run(
    make_config, synth_corpus, tmp_path
):
    from mlflow.tracking import MlflowClient

    overrides = ("train.tracking=mlflow", "train.eval_every=2")
    cfg = make_config("train.max_steps=3", *overrides, manifest=synth_corpus.few)
    train(cfg, progress=False)
    out = tmp_path / "run"
    saved = json.loads((out / "mlflow_run.json").read_text())
    assert saved["uri"] == f"sqlite:///{(out / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=saved["uri"])
    run = client.get_run(saved["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == str(cfg.optim.lr)
    assert run.data.params["train.max_steps"] == "3"
    records = [r for r in read_metrics(out / "metrics.jsonl") if "train_loss" in r]
    history = client.get_metric_history(saved["run_id"], "train_loss")
    assert len(records) == 3
    assert [(m.step, m.value) for m in history] == [(r["step"], r["train_loss"]) for r in records]
    assert client.get_metric_history(saved["run_id"], "dev_cer")  # evaluations too

    again = make_config("train.max_steps=5", *overrides, manifest=synth_corpus.few)
    train(again, resume="auto", progress=False)
    assert json.loads((out / "mlflow_run.json").read_text()) == saved  # the same MLflow run
    steps = [m.step for m in client.get_metric_history(saved["run_id"], "train_loss")]
    assert steps[-2:] == [4, 5] and len(client.search_runs([run.info.experiment_id])) == 1


def test_without_mlflow_the_error_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(UnavailableError, match=r"speechswarm\[tracking\]"):
        open_tracking("mlflow", "", tmp_path, {})
    assert open_tracking("none", "", tmp_path, {}) is None


def test_a_run_that_fails_ends_its_mlflow_run_failed(make_config, synth_corpus, tmp_path):
    from mlflow.tracking import MlflowClient

    from speechswarm.train.step import TrainingDiverged

    cfg = make_config(
        "train.max_steps=3",
        "train.tracking=mlflow",
        "optim.lr=1e30",  # every update overflows: the run diverges
        "train.max_nonfinite=1",
        manifest=synth_corpus.few,
    )
    with pytest.raises(TrainingDiverged):
        train(cfg, progress=False)
    saved = json.loads((tmp_path / "run" / "mlflow_run.json").read_text())
    run = MlflowClient(tracking_uri=saved["uri"]).get_run(saved["run_id"])
    assert run.info.status == "FAILED"
