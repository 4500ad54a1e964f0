"""Optional MLflow experiment tracking beside metrics.jsonl and TensorBoard (off by default).

    speechswarm train --config tiny train.tracking=mlflow        # <out_dir>/mlflow.db
    speechswarm train --config tiny train.tracking=mlflow train.tracking_uri=http://host:5000
    mlflow ui --backend-store-uri sqlite:///runs/tiny/mlflow.db   # browse it

`MlflowMirror` copies every record `MetricsLogger.log` writes (the same keys and steps) into
one MLflow run, with the resolved config as its parameters (`optim.lr`, `model.rnn_hidden`,
...). The default store is a SQLite file in the run's folder: MLflow 3 keeps its plain-file
store in maintenance mode, and SQLite needs no server. The run id is kept in
`<out_dir>/mlflow_run.json`, so `--resume` continues the same MLflow run; the steps a resume
redoes are logged again there (MLflow cannot delete points), while metrics.jsonl drops them.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from speechswarm.errors import UnavailableError

TRACKERS = ("none", "mlflow")
PARAM_MAX_CHARS = 500  # longer values (lists of paths) are cut: parameters are for reading


def _client(uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as e:
        raise UnavailableError(
            "train.tracking=mlflow needs MLflow: pip install 'speechswarm[tracking]' "
            "(mlflow-skinny, sqlalchemy, alembic), or set train.tracking=none"
        ) from e
    for name in ("mlflow", "alembic"):  # their table set-up logs at INFO on every open
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


def flat_params(tree: dict, prefix: str = "") -> dict[str, str]:
    """{"optim": {"lr": 0.001}} -> {"optim.lr": "0.001"}, values as text, cut to
    PARAM_MAX_CHARS."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flat_params(value, name))
        else:
            out[name] = str(value)[:PARAM_MAX_CHARS]
    return out


class MlflowMirror:
    """One MLflow run that receives what the run's MetricsLogger logs."""

    def __init__(self, run_dir: str | Path, uri: str, experiment: str, params: dict[str, str]):
        run_dir = Path(run_dir)
        self.uri = uri or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        self.client = _client(self.uri)
        self.id_path = run_dir / "mlflow_run.json"
        run_id = self._previous_run()
        if run_id is None:
            found = self.client.get_experiment_by_name(experiment)
            exp = found.experiment_id if found else self.client.create_experiment(experiment)
            run_id = self.client.create_run(exp, run_name=run_dir.name).info.run_id
            self.id_path.write_text(json.dumps({"run_id": run_id, "uri": self.uri}) + "\n")
            self._params(run_id, params)
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def _previous_run(self) -> str | None:
        if not self.id_path.is_file():
            return None
        saved = json.loads(self.id_path.read_text())
        if saved.get("uri") != self.uri:
            return None  # another store: a new run there
        return saved["run_id"]

    def _params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log(self, step: int, scalars: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now, int(step))
            for key, value in scalars.items()
            if value is not None
        ]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, status: str = "FINISHED") -> None:
        """End the MLflow run as FINISHED, FAILED (the training raised) or KILLED (Ctrl-C)."""
        self.client.set_terminated(self.run_id, status=status)


def open_tracking(tracking: str, uri: str, run_dir: str | Path, config: dict):
    """The mirror train.tracking asks for, or None ("none")."""
    if tracking == "none":
        return None
    if tracking != "mlflow":
        raise ValueError(f"train.tracking must be one of {', '.join(TRACKERS)}, got {tracking!r}")
    return MlflowMirror(run_dir, uri, "speechswarm", flat_params(config))
