"""`speechswarm p2p`: agents from a corpus, one or several runs, a comparison report.

    speechswarm p2p --config p2p-tiny                      # the README experiment
    speechswarm p2p --config p2p-tiny --resume             # continue after an interruption
    speechswarm p2p --config p2p-ds2 --clients my.py:load_clients_data p2p.topology=regular

`run_experiment(cfg)` splits the training manifest (or a clients hook's data) into agents,
writes their manifests to `<out>/agents/`, runs each of `p2p.runs` (default: just
`p2p.algorithm` on `p2p.topology`) into `<out>/<run>/`, then draws the comparison plots and
writes `<out>/report.md` and `<out>/summary.json`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from speechswarm.build import build_features, build_model, build_tokenizer
from speechswarm.config import (
    GRAPH_ALGORITHMS,
    Config,
    P2PConfig,
    check_p2p,
    check_run,
    dump_yaml,
    from_dict,
    parse_run,
    run_name,
    to_dict,
)
from speechswarm.data.manifest import Utterance, write_manifest
from speechswarm.errors import InputNotFoundError
from speechswarm.p2p.partition import Agent, agents_from_splits, partition, split_agents
from speechswarm.p2p.report import (
    plot_agents,
    plot_comparison,
    read_rows,
    report_markdown,
    summarize,
    wire_bytes,
)
from speechswarm.p2p.runner import simulate_run
from speechswarm.p2p.topology import make_topology, topology_options
from speechswarm.report import pct

log = logging.getLogger("speechswarm.p2p")


def make_agents(cfg: Config, out_dir: Path, clients: str = "") -> list[Agent]:
    """The agents of this config: a clients hook's data, or the training manifest split."""
    p = cfg.p2p
    spec = clients or p.clients
    if spec:
        from speechswarm.data.clients import clients_from_hook, load_hook

        try:
            hook = load_hook(spec)
        except (ImportError, AttributeError, TypeError) as e:
            raise ValueError(str(e)) from e
        splits = clients_from_hook(hook(), out_dir / "clients", sample_rate=cfg.data.sample_rate)
        return agents_from_splits(splits, p.test_fraction, p.seed)
    utts = usable_utterances(cfg, cfg.data.train_manifest, out_dir)
    groups = partition(utts, p.partition, p.agents, seed=p.seed, alpha=p.dirichlet_alpha)
    return split_agents(
        groups, p.test_fraction, p.dev_fraction, seed=p.seed, max_utts=p.agent_max_utts
    )


def usable_utterances(cfg: Config, manifest: str, out_dir: Path) -> list[Utterance]:
    """A manifest's utterances without over-long ones and (data.validate) broken ones."""
    if not Path(manifest).is_file():
        raise InputNotFoundError(
            f"{manifest} does not exist (data.train_manifest / data.test_manifest); make the "
            "built-in corpus with `speechswarm synth --out data/synth` or point the key at yours"
        )
    from speechswarm.train.training_data import load_training_utterances

    tokenizer = build_tokenizer(cfg.tokenizer)
    extractor = build_features(cfg.features, cfg.data.sample_rate)
    model = build_model(cfg.model, extractor.num_features, len(tokenizer))
    return load_training_utterances(cfg, manifest, tokenizer, model, out_dir, log, progress=False)


def write_agents(agents: list[Agent], out_dir: Path) -> list[dict]:
    rows = []
    for a in agents:
        folder = out_dir / "agents" / a.name
        for split in ("train", "dev", "test"):
            write_manifest(folder / f"{split}.jsonl", getattr(a, split))
        rows.append(a.summary())
    (out_dir / "agents.json").write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def run_experiment(
    cfg: Config,
    *,
    resume: bool = False,
    clients: str = "",
    should_stop: Callable[[int], bool] | None = None,
    progress: bool = True,
) -> dict:
    """Run every configured run; returns {"dir", "runs": [summary...], "report", "stopped"}."""
    check_p2p(cfg.p2p)
    specs = [parse_run(s, cfg.p2p.topology) for s in cfg.p2p.runs] or [
        (cfg.p2p.algorithm, cfg.p2p.topology, {})
    ]
    configs = [with_run_options(cfg, options) for _, _, options in specs]  # all checked now
    for (algorithm, _, _), run_cfg in zip(specs, configs, strict=True):
        check_run(algorithm, run_cfg.p2p)
    out = Path(cfg.train.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _logging_to(out / "p2p.log", progress):
        return _run_all(cfg, specs, configs, out, resume, clients, should_stop, progress)


def _run_all(
    cfg: Config,
    specs: list[tuple[str, str, dict]],
    configs: list[Config],
    out: Path,
    resume: bool,
    clients: str,
    should_stop: Callable[[int], bool] | None,
    progress: bool,
) -> dict:
    """run_experiment's work, once its runs are checked and its log is open."""
    (out / "config.yaml").write_text(dump_yaml(cfg))
    agents = make_agents(cfg, out, clients)
    for (algorithm, topology, _), run_cfg in zip(specs, configs, strict=True):
        if algorithm in GRAPH_ALGORITHMS:  # a graph that cannot be built fails now, not mid-way
            make_topology(
                topology, len(agents), seed=run_cfg.p2p.seed, **topology_options(run_cfg.p2p)
            )
    agent_rows = write_agents(agents, out)
    global_test = []
    if cfg.data.test_manifest and Path(cfg.data.test_manifest).is_file():
        global_test = usable_utterances(cfg, cfg.data.test_manifest, out)
    log.info(
        f"{len(agents)} agents ({cfg.p2p.partition if not (clients or cfg.p2p.clients) else 'clients'}): "
        f"{sum(len(a.train) for a in agents):,} train / {sum(len(a.test) for a in agents):,} "
        f"test utts; global test {min(len(global_test), cfg.p2p.global_test_max or 10**9)} utts"
    )
    stopped = False
    summaries = []
    for (algorithm, topology, options), run_cfg in zip(specs, configs, strict=True):
        name = run_name(algorithm, topology, options)
        result = simulate_run(
            run_cfg,
            algorithm,
            topology,
            agents,
            global_test,
            out / name,
            resume=resume,
            should_stop=should_stop,
            on_round=_print_round if progress else None,
            name=name,
        )
        rows = read_rows(out / name / "metrics.jsonl")
        plot_agents(rows, out / name / "agents_wer_cer.png")
        summary = summarize(rows)
        summary.update(
            algorithm=algorithm,
            topology=topology,
            options=options,
            stop_reason=result["stop_reason"],
        )
        (out / name / "summary.json").write_text(json.dumps(_plain(summary), indent=1) + "\n")
        summaries.append(summary)
        if result["stop_reason"] == "interrupted":
            stopped = True
            break
    runs = {s["run"]: read_rows(out / s["run"] / "metrics.jsonl") for s in summaries}
    plot_comparison(runs, out / "plots")
    notes = [
        f"{len(agents)} agents, partition `{cfg.p2p.partition}`, {cfg.p2p.rounds} rounds of "
        + (
            f"{cfg.p2p.local_steps} local steps"
            if cfg.p2p.local_steps
            else f"{cfg.p2p.local_epochs} local epoch(s)"
        )
        + f", weights `{cfg.p2p.weights}`, aggregation `{cfg.p2p.aggregation}`, compression "
        f"`{cfg.p2p.compression}`, batch-norm statistics `{cfg.p2p.bn_stats}`."
    ]
    report = out / "report.md"
    report.write_text(report_markdown(summaries, agent_rows, notes, out))
    (out / "summary.json").write_text(json.dumps(_plain(summaries), indent=1) + "\n")
    if progress:
        for s in summaries:
            print(_summary_line(s))
        print(f"report: {report}")
    return {"dir": out, "runs": summaries, "report": report, "stopped": stopped}


def with_run_options(cfg: Config, options: dict) -> Config:
    """`cfg` with one run's own p2p keys (`p2p.runs` entries like "fedavg outer_lr=0.7"),
    type-checked and range-checked like the config file's."""
    if not options:
        return cfg
    p2p = from_dict(P2PConfig, {**to_dict(cfg.p2p), **options}, "p2p")
    check_p2p(p2p)
    return dataclasses.replace(cfg, p2p=p2p)


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _print_round(name: str, round_index: int, rows: list[dict]) -> None:
    cers = [r["own_cer"] for r in rows if r.get("own_cer") is not None]
    losses = [
        r["train_loss"]
        for r in rows
        if r.get("train_loss") is not None and math.isfinite(r["train_loss"])
    ]
    text = f"{name} round {round_index}: loss {sum(losses) / max(len(losses), 1):.1f}"
    if cers:
        glob = [r["global_cer"] for r in rows if r.get("global_cer") is not None]
        text += (
            f", agents' CER {pct(sum(cers) / len(cers))} ({pct(min(cers))}-{pct(max(cers))})"
            f", global CER {pct(sum(glob) / max(len(glob), 1))}"
        )
    sent = sum(wire_bytes(r) for r in rows)
    rejected = sum(r["rejected"] for r in rows)
    text += f", {sent / 1e6:,.1f} MB on the wire" + (f", {rejected} rejected" if rejected else "")
    text += f", {rows[0]['wall_time']:.0f} s"
    print(text, flush=True)


def _summary_line(s: dict) -> str:
    return (
        f"{s['run']}: agents' WER {pct(s.get('own_wer_mean'))} CER {pct(s.get('own_cer_mean'))} "
        f"(CER {pct(s.get('own_cer_min'))}-{pct(s.get('own_cer_max'))}), global CER "
        f"{pct(s.get('global_cer_mean'))}; {s.get('total_steps', 0):,} steps, "
        f"{s.get('bytes', 0) / 1e6:,.1f} MB on the wire, {s.get('rejected', 0)} rejected"
    )


@contextlib.contextmanager
def _logging_to(path: Path, progress: bool) -> Iterator[None]:
    """The `speechswarm.p2p` log into `path` (and stderr with `progress`) while the block runs.
    The handlers go when it ends, however it ends: a run called in-process (a campaign, a
    test, a notebook) must not leave the next one logging into its folder, or into a stderr
    that was redirected while it ran."""
    logger = logging.getLogger("speechswarm.p2p")
    logger.setLevel(logging.INFO)
    fh = logging.FileHandler(path, encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    handlers: list[logging.Handler] = [fh]
    if progress:
        handlers.append(logging.StreamHandler(sys.stderr))
    for h in handlers:
        logger.addHandler(h)
    try:
        yield
    finally:
        for h in handlers:
            logger.removeHandler(h)
            h.close()
