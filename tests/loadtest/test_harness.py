"""The locust harness: its correctness check against a real grid, and whole runs.

The check is what makes a load run's verdict trustworthy, so it is tested
both ways: acknowledged writes the grid holds pass, and a tally that claims
more than the grid holds (a lost cart write, a lost or oversold commit) is
caught. The runs start the harness as a channel's ops would, as a command.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

from loadtest.harness import check, latency_over_hold, seed
from loadtest.harness_report import verdict
from tests.conftest import Grid, new_id, write_headers

ROOT = Path(__file__).resolve().parents[2]


def _tally(
    folder: Path,
    carts: dict[str, Any],
    committed: dict[str, int],
    name: str = "tally-1.json",
    **extra: Any,
) -> None:
    tally = {"carts": carts, "committed": committed, "final": True, **extra}
    (folder / name).write_text(json.dumps(tally))


def _sell(client: httpx.Client, sku: str, qty: int) -> None:
    r = client.post(
        f"/v1/skus/{sku}/reservations", json={"qty": qty, "ttl_s": 60}, headers=write_headers()
    )
    assert r.status_code == 201, r.text
    rid = r.json()["reservation_id"]
    r = client.post(f"/v1/skus/{sku}/reservations/{rid}/commit", headers=write_headers())
    assert r.status_code == 200, r.text


def _seeded(grid: Grid) -> dict[str, Any]:
    return asyncio.run(seed(grid.url, new_id("t"), skus=3, hot=1, on_hand=10, hot_on_hand=2))


def test_acknowledged_writes_the_grid_holds_pass(grid: Grid, tmp_path: Path) -> None:
    seeded = _seeded(grid)
    sku, hot = seeded["skus"][0], seeded["hot_skus"][0]
    uid = new_id("u")
    with httpx.Client(base_url=grid.url, timeout=10) as client:
        r = client.post(
            f"/v1/carts/{uid}/lines", json={"sku": sku, "qty": 2}, headers=write_headers()
        )
        view = r.json()
        _sell(client, sku, 3)
        _sell(client, hot, 2)
    acked = {uid: {"version": view["version"], "lines": {sku: 2}}}
    _tally(tmp_path, acked, {sku: 3, hot: 2})
    found = check(grid.url, seeded, tmp_path)
    assert found["skus_checked"] == 4 and found["carts_checked"] == 1
    assert found["oversold"] == [] and found["lost_commits"] == []
    assert found["lost_cart_writes"] == [] and found["commits_without_answer"] == 0
    assert found["cart_writes_without_answer"] == 0


def test_a_tally_claiming_more_than_the_grid_holds_is_caught(grid: Grid, tmp_path: Path) -> None:
    seeded = _seeded(grid)
    sku, other, hot = seeded["skus"][0], seeded["skus"][1], seeded["hot_skus"][0]
    uid, unanswered = new_id("u"), new_id("u")
    with httpx.Client(base_url=grid.url, timeout=10) as client:
        r = client.post(
            f"/v1/carts/{uid}/lines", json={"sku": sku, "qty": 1}, headers=write_headers()
        )
        version = r.json()["version"]
        for _ in range(2):  # the second answer "never arrived": the tally has the first
            r = client.post(
                f"/v1/carts/{unanswered}/lines",
                json={"sku": sku, "qty": 1},
                headers=write_headers(),
            )
        _sell(client, other, 4)  # sold in the grid, answer lost: not a failure, but counted
    carts = {
        uid: {"version": version + 1, "lines": {sku: 1}},  # a write the grid does not hold
        unanswered: {"version": 1, "lines": {sku: 1}},
    }
    _tally(tmp_path, carts, {sku: 1, hot: 3})  # sku never sold; hot has 2 on hand
    found = check(grid.url, seeded, tmp_path)
    assert found["lost_cart_writes"] == [uid]
    assert found["cart_writes_without_answer"] == 1
    assert sorted(found["lost_commits"]) == sorted([sku, hot])
    assert found["oversold"] == [hot]  # more committed than it ever had
    assert found["commits_without_answer"] == 4


def _harness(*args: str) -> subprocess.CompletedProcess[str]:
    """A whole run, judged on correctness only: its latency is reported, not judged.

    These runs share two cores with the rest of the suite, so a p99 goal here
    would test the machine's load, not the harness; latency is measured by
    the benchmark runs in BENCHMARKS.md (and judged by the verdict's unit test).
    """
    return subprocess.run(
        [sys.executable, str(ROOT / "loadtest" / "harness.py"), "--p99-goal-ms", "0", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )


def _assert_passed(run: subprocess.CompletedProcess[str], out: Path, users: int) -> None:
    assert run.returncode == 0, run.stdout + run.stderr
    assert "VERDICT: PASS" in run.stdout, run.stdout
    assert "(not judged: --p99-goal-ms 0)" in run.stdout
    summary = json.loads((out / "summary.json").read_text())
    stats, found = summary["stats"], summary["check"]
    assert stats["requests"] > users and stats["failures"] == 0
    assert {"requests", "p99_ms"} <= set(stats["ramp"])  # the spawning phase, kept apart
    assert found["oversold"] == [] and found["lost_cart_writes"] == []
    assert found["carts_checked"] > 0 and found["skus_checked"] == 31
    assert max(n for _, n in summary["connections"]) >= users  # one kept connection each
    inside = stats["inside_grid"]  # the grid's own histogram over the hold
    assert inside["requests"] > 0 and 0 <= inside["over_25ms"] <= inside["requests"]
    assert found["final_tallies"] == found["tallies"] > 0  # every worker's last word landed
    assert "in flight or cut off at stop" in run.stdout
    assert stats["locust_cpu_us_per_request"] > 0  # the generator's cost, beside the grid's
    assert "CPU per request over the hold" in run.stdout
    for name in ("locust-over-time.png", "locust_stats.csv", "locust_stats_history.csv"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "report.html").exists()


def test_a_run_against_a_grid_named_by_url(grid: Grid, tmp_path: Path) -> None:
    run = _harness(
        *("--url", grid.url, "-u", "40", "-r", "40", "--hold", "12", "--settle", "2"),
        *("--think", "0.2,0.6", "--processes", "2", "--skus", "30", "--hot", "1"),
        *("--out", str(tmp_path)),
    )
    _assert_passed(run, tmp_path, 40)


def test_a_run_on_a_grid_it_starts_over_two_ports(tmp_path: Path) -> None:
    run = _harness(
        *("-u", "30", "-r", "30", "--hold", "12", "--settle", "2", "--think", "0.2,0.6"),
        *("--processes", "1", "--ports", "2", "--skus", "30", "--hot", "1"),
        *("--out", str(tmp_path)),
    )
    _assert_passed(run, tmp_path, 30)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stats"]["grid_cpu_us_per_request"] > 0  # a grid it started: measured
    assert "grid on 2 port(s)" in run.stdout
    assert "open files: soft" in run.stdout  # it says what it raised


def test_a_run_on_a_grid_behind_its_nginx_front(tmp_path: Path) -> None:
    run = _harness(
        *("-u", "20", "-r", "20", "--hold", "10", "--settle", "2", "--think", "0.2,0.6"),
        *("--processes", "1", "--ports", "2", "--front-workers", "1", "--skus", "30"),
        *("--hot", "1", "--out", str(tmp_path)),
    )
    _assert_passed(run, tmp_path, 20)
    assert "nginx (1 workers) in front of 2 shard processes" in run.stdout


def test_a_run_on_the_floor_behind_the_same_front_checks_nothing_and_says_so(
    tmp_path: Path,
) -> None:
    run = _harness(
        *("--floor", "-u", "20", "-r", "20", "--hold", "8", "--settle", "2"),
        *("--think", "0.2,0.6", "--processes", "1", "--front-workers", "1", "--skus", "30"),
        *("--out", str(tmp_path)),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "VERDICT: PASS" in run.stdout and "THE FLOOR" in run.stdout, run.stdout
    assert "oversold" not in run.stdout  # no state: no claim about it
    summary = json.loads((tmp_path / "summary.json").read_text())
    stats = summary["stats"]
    # every journey ran against it (reservations got their 201), none failed
    assert stats["requests"] > 20 and stats["failures"] == 0
    assert stats["grid_cpu_us_per_request"] > 0 and stats["locust_cpu_us_per_request"] > 0
    assert stats["inside_grid"] is None  # it keeps no histogram
    assert summary["check"] == {"floor": True, "final_tallies": 1}


def test_bad_arguments_are_refused_before_anything_starts(tmp_path: Path) -> None:
    for bad in (
        ["-u", "0"],
        ["--spawn-rate", "-1"],
        ["--processes", "0"],
        ["--think", "40,20"],
        ["--think", "soon"],
        ["--settle", "-5"],
        ["--ports", "0"],
        ["--p99-goal-ms", "-1"],
        ["--front-workers", "-1"],
        ["--floor"],  # the floor sits behind nginx
        ["--floor", "--front-workers", "1", "--url", "http://127.0.0.1:1"],
    ):
        run = _harness(*bad, "--out", str(tmp_path / "never"))
        assert run.returncode == 2, (bad, run.stdout, run.stderr)
        assert "error:" in run.stderr, bad
        assert not (tmp_path / "never").exists(), "nothing started, nothing written"


def _hold_stats(p99_ms: float) -> dict[str, Any]:
    """A hold's figures as the harness summarises them (1,000 requests, none failed)."""
    return {
        "requests": 1000, "rps": 100.0, "failures": 0, "p50_ms": 5.0, "p95_ms": 9.0,
        "p99_ms": p99_ms, "max_ms": 140.0, "failures_by_kind": {},
    }  # fmt: skip


def _verdict_args(processes: int) -> SimpleNamespace:
    return SimpleNamespace(
        users=10, hold=10.0, spawn_rate=10.0, settle=1.0, processes=processes, p99_goal_ms=100.0
    )


def test_the_verdict_fails_incomplete_without_every_final_tally_and_says_what_was_in_flight(
    grid: Grid, tmp_path: Path
) -> None:
    seeded = _seeded(grid)
    in_flight = {"cart_writes": 3, "commits": 1}
    _tally(tmp_path, {}, {}, "tally-1.json", unanswered=in_flight)
    _tally(tmp_path, {}, {}, "tally-2.json", final=False, unanswered={"cart_writes": 2})
    found = check(grid.url, seeded, tmp_path)
    assert found["tallies"] == 2 and found["final_tallies"] == 1
    assert found["unanswered_at_stop"] == {"cart_writes": 5, "commits": 1}
    stats, args = _hold_stats(p99_ms=20.0), _verdict_args(processes=2)
    said = verdict(args, stats, found)  # type: ignore[arg-type]
    assert "VERDICT: FAIL" in said and "INCOMPLETE: final tallies from 1 of 2" in said
    assert "in flight or cut off at stop: cart writes 5, commits 1 units" in said
    _tally(tmp_path, {}, {}, "tally-2.json")  # the second worker's final tally lands
    said = verdict(args, stats, check(grid.url, seeded, tmp_path))  # type: ignore[arg-type]
    assert "VERDICT: PASS" in said and "INCOMPLETE" not in said


def test_the_verdict_judges_p99_against_its_goal_unless_told_not_to() -> None:
    found = {
        "oversold": [], "lost_cart_writes": [], "lost_commits": [], "skus_checked": 3,
        "carts_checked": 2, "commits_without_answer": 0, "cart_writes_without_answer": 0,
        "final_tallies": 1,
    }  # fmt: skip
    stats, args = _hold_stats(p99_ms=100.0), _verdict_args(processes=1)
    said = verdict(args, stats, found)  # type: ignore[arg-type]
    assert "VERDICT: FAIL" in said and "p99 100 ms (goal < 100)" in said  # "< 100" is strict
    args.p99_goal_ms = 150.0
    assert "VERDICT: PASS" in verdict(args, stats, found)  # type: ignore[arg-type]
    args.p99_goal_ms = 0.0
    said = verdict(args, stats, found)  # type: ignore[arg-type]
    assert "VERDICT: PASS" in said and "p99 100 ms (not judged: --p99-goal-ms 0)" in said
    stats["failures"] = 1  # correctness is judged either way: 0.1% failures is too many
    assert "VERDICT: FAIL" in verdict(args, stats, found)  # type: ignore[arg-type]


def test_the_grids_histogram_is_compared_only_over_the_same_processes() -> None:
    first = {"requests": 100.0, "within_25ms": 90.0, "shards": ["0", "1"]}
    last = {"requests": 300.0, "within_25ms": 280.0, "shards": ["0", "1"]}
    assert latency_over_hold(first, last) == {"requests": 200.0, "over_25ms": 10.0, "share": 0.05}
    # a process that did not answer one reading: its counts are missing from it
    assert latency_over_hold(first, {**last, "shards": ["0"]}) is None
    # a process restarted: its counts began again
    assert latency_over_hold(first, {**last, "requests": 50.0, "within_25ms": 40.0}) is None
    found = {
        "oversold": [], "lost_cart_writes": [], "lost_commits": [], "skus_checked": 3,
        "carts_checked": 2, "commits_without_answer": 0, "cart_writes_without_answer": 0,
        "final_tallies": 1,
    }  # fmt: skip
    stats = {**_hold_stats(p99_ms=20.0), "inside_grid": None}
    said = verdict(_verdict_args(processes=1), stats, found)  # type: ignore[arg-type]
    assert "inside the grid: not measured" in said
