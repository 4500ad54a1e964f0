"""Hostile inputs campaign: every hostile input is refused in one line, runs no code, writes
nothing outside its target folder.

    speechswarm chaos hostile --out runs/hostile

Builds each input of `chaos/hostile_inputs.py` (checkpoints carrying pickle payloads, client
hooks that raise or return the wrong thing) and `chaos/hostile_data.py` (TAR shards whose
members point outside, manifests with absolute and `..` paths, malformed ARPA files), each in
its own sandbox folder under OUT/sandbox, runs the command a user would run on it, and
judges from the outside:

- refused: the command did not use the input (an error, or the utterance or sample skipped);
  inputs the docs say are read (a manifest's absolute path) must be read as documented;
- one-line error: what the user saw is one line (`speechswarm <command>: error: ...`) that
  says what is wrong (for a pickle payload: that the file holds code, not "corrupt");
- traceback: a Python traceback reached the user;
- code executed: the payload's marker file exists (each payload would create it);
- written outside: a file appeared in the sandbox but outside its target and input folders
  (hostile names aim there: `../ESCAPED`, absolute paths into the sandbox).

An input passes when it is refused (or read as documented) with a one-line error, no
traceback, no code run and nothing written outside. Writes OUT/hostile.md (a table per kind)
and OUT/hostile.json (every input's raw result); prints the table; exits 1 unless every
input passes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from speechswarm.atomic import atomic_open
from speechswarm.chaos import hostile_inputs
from speechswarm.chaos.hostile_data import ARPA_CASES, MANIFEST_CASES, SHARD_CASES
from speechswarm.chaos.hostile_inputs import CHECKPOINT_CASES, HOOK_CASES, Case, Sandbox

CASES: list[Case] = [*CHECKPOINT_CASES, *SHARD_CASES, *MANIFEST_CASES, *HOOK_CASES, *ARPA_CASES]
KINDS = ("checkpoint", "shard", "manifest", "hook", "arpa")


@dataclass(frozen=True)
class Outcome:
    """One hostile input's result (a row of OUT/hostile.json)."""

    kind: str
    name: str
    via: str
    expect: str  # "refuse", or "read" (used as the docs say)
    refused: bool
    as_documented: bool
    one_line: bool
    traceback: bool
    code_executed: bool
    written_outside: list[str]
    message: str
    seconds: float

    @property
    def passed(self) -> bool:
        handled = self.refused if self.expect == "refuse" else not self.refused
        clean = not (self.traceback or self.code_executed or self.written_outside)
        return handled and self.as_documented and self.one_line and clean


def run_case(case: Case, root: Path) -> Outcome:
    """Run `case` in a fresh sandbox under `root` (with `root` as the working folder)."""
    box = Sandbox(root)
    shutil.rmtree(root, ignore_errors=True)
    box.inputs.mkdir(parents=True)
    box.target.mkdir()
    before = _files(root)
    start, cwd = time.perf_counter(), Path.cwd()
    os.chdir(root)  # a stray relative write lands in the sandbox, where it is seen
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes are not the test
            attempt = case.run(box)
    finally:
        os.chdir(cwd)
    seconds = time.perf_counter() - start
    allowed = (box.inputs, box.target)
    outside = sorted(
        str(p.relative_to(root))
        for p in _files(root) - before
        if not any(p.is_relative_to(a) for a in allowed)
    )
    message = attempt.message.strip()
    return Outcome(
        case.kind, case.name, case.via, case.expect, attempt.refused, attempt.as_documented,
        one_line=case.expect == "read" or (
            bool(message) and "\n" not in message and attempt.as_documented
        ),
        traceback=attempt.traceback, code_executed=box.marker.exists(),
        written_outside=[p for p in outside if p != box.marker.name],
        message=message, seconds=round(seconds, 2),
    )  # fmt: skip


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")} if folder.exists() else set()


def run_campaign(out: str | os.PathLike, cases: list[Case] = CASES, progress=print) -> list:
    """Every case in its own sandbox under OUT/sandbox; returns their Outcomes."""
    sandbox = Path(out).resolve() / "sandbox"
    outcomes = []
    for i, case in enumerate(cases):
        outcome = run_case(case, sandbox / f"{i:03d}-{case.kind}")
        outcomes.append(outcome)
        mark = "ok  " if outcome.passed else "FAIL"
        progress(f"{mark} {case.kind:<10} {case.name} ({case.via}): {_short(outcome.message)}")
    return outcomes


def _short(message: str, width: int = 110) -> str:
    line = message.splitlines()[-1] if message else "(no message)"
    return line if len(line) <= width else line[: width - 3] + "..."


def table(outcomes: list[Outcome]) -> str:
    """The markdown table per kind: inputs; of those to refuse, how many were refused and
    with a one-line error; of those read on purpose, how many as documented; and of all,
    how many showed a traceback, ran the payload's code, wrote outside, passed."""
    rows = [
        "| kind | inputs | refused | read as documented | one-line error | traceback "
        "| code executed | written outside | passed |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for kind in [*KINDS, "all"]:
        group = [o for o in outcomes if kind in ("all", o.kind)]
        if not group:
            continue
        bad, read = (
            [o for o in group if o.expect == "refuse"],
            [o for o in group if o.expect == "read"],
        )
        refused = f"{sum(o.refused for o in bad)}/{len(bad)}"
        used = sum(o.as_documented and not o.refused for o in read)
        errors = sum(o.one_line for o in bad)
        passed = sum(o.passed for o in group)
        rows.append(
            f"| {kind} | {len(group)} | {refused} | {f'{used}/{len(read)}' if read else '-'} | "
            f"{errors}/{len(bad)} | {sum(o.traceback for o in group)} | "
            f"{sum(o.code_executed for o in group)} | {sum(bool(o.written_outside) for o in group)} | "
            f"{passed}/{len(group)} ({100 * passed / len(group):.0f} %) |"
        )
    return "\n".join(rows)


def write_results(out: Path, outcomes: list[Outcome]) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    rows = [dict(asdict(o), passed=o.passed) for o in outcomes]
    with atomic_open(out / "hostile.json") as f:
        json.dump({"inputs": rows}, f, indent=1, ensure_ascii=False)
    failed = [o for o in outcomes if not o.passed]
    lines = [table(outcomes), ""]
    lines += [f"- FAILED {o.kind} {o.name} ({o.via}): {_short(o.message, 300)}" for o in failed]
    with atomic_open(out / "hostile.md") as f:
        f.write("\n".join(lines).rstrip() + "\n")
    return out / "hostile.md", out / "hostile.json"


def main(argv: list[str] | None = None, run_cli: Callable[[list[str]], int] | None = None) -> int:
    """`speechswarm chaos hostile ARGV`; `run_cli`: the CLI's entry point, which runs the
    commands under test (`hostile_inputs.RUN_CLI`)."""
    if run_cli is not None:
        hostile_inputs.RUN_CLI = run_cli
    p = argparse.ArgumentParser(
        prog="speechswarm chaos hostile", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", default="runs/hostile", help="folder for sandboxes and results")
    p.add_argument("--kind", choices=KINDS, action="append", help="only these kinds (repeatable)")
    p.add_argument("--keep", action="store_true", help="keep OUT/sandbox (the hostile files)")
    args = p.parse_args(argv)
    import torch

    threads, logging_off = torch.get_num_threads(), logging.root.manager.disable
    torch.set_num_threads(1)  # small models; the campaign shares the machine
    logging.disable(logging.INFO)  # train's progress lines; warnings stay (they are judged)
    cases = [c for c in CASES if not args.kind or c.kind in args.kind]
    out = Path(args.out)
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # what the commands print is no report
            outcomes = run_campaign(
                out, cases, progress=lambda line: print(line, file=sys.__stderr__)
            )
    finally:  # the process goes on (a test, a caller): its logging and threads as they were
        logging.disable(logging_off)
        torch.set_num_threads(threads)
    md, js = write_results(out, outcomes)
    if not args.keep:
        shutil.rmtree(out / "sandbox", ignore_errors=True)
    print(table(outcomes))
    passed = sum(o.passed for o in outcomes)
    print(
        f"hostile: {passed}/{len(outcomes)} inputs refused (or read as documented) cleanly in "
        f"{time.perf_counter() - start:.0f} s — {md}, {js}"
    )
    return 0 if passed == len(outcomes) else 1
