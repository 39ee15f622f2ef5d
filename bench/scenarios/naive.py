"""Against the naive receiver: answer latency of the relay and of Dataslayer's documented
receiver (decrypt, post to Slack, then answer), both posting to a Slack that takes 100 ms per
message, at increasing open-loop request rates.

The relay runs first and is stopped (its sends in flight finish) before the naive receiver's
turn, so both find the Slack idle; each rate step waits for every answer before the next starts,
so a step measures its own rate. The relay is "flat" when its median answer at the highest
rate is within 2x of the lowest; the naive receiver "grows" when its median more than doubles.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from bench.harness import Bench
from bench.load import LoadResult
from bench.procs import SECRET, relay_url, running, slack_sink, spawn_app
from bench.report import row
from bench.stats import latency_ms, percentile

SLACK_SECONDS = 0.1
SLACK_PATH = "/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX"
MAX_IN_FLIGHT = 2048  # the open loop must never wait for a connection of its own
FLAT = 2.0


async def run(bench: Bench) -> dict[str, Any]:
    folder = bench.folder("naive")
    steps: dict[str, list[tuple[float, LoadResult]]] = {}
    slack = spawn_app("slack", folder, "--per-message", str(SLACK_SECONDS))
    relay = bench.spawn_relay(folder, slack_sink(slack.url + SLACK_PATH))
    naive = spawn_app("naive", folder, "--secret", SECRET, "--slack-url", slack.url + SLACK_PATH)
    async with AsyncExitStack() as stack:
        await running(stack, slack, relay, naive)  # together: spawns are slow
        steps["relay"] = await _steps(bench, relay_url(relay))
        # Its backlog would keep the Slack busy during the naive receiver's turn.
        await relay.stop()
        steps["naive"] = await _steps(bench, naive.url + "/hook")
    return _summarise(steps)


async def _steps(bench: Bench, url: str) -> list[tuple[float, LoadResult]]:
    s = bench.sizes
    results = []
    for rate in s.naive_rates:
        count = max(1, round(rate * s.naive_step_seconds))
        results.append((rate, await bench.load(url, count, MAX_IN_FLIGHT, rate=rate)))
    return results


def _summarise(steps: dict[str, list[tuple[float, LoadResult]]]) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    series: dict[str, Any] = {}
    rows = []
    for name, results in steps.items():
        for rate, result in results:
            key = f"{name}_at_{rate:g}_per_s"
            answer = latency_ms(result.latency)
            metrics.update({f"{key}_{stat}": value for stat, value in answer.items()})
            metrics[f"{key}_failed"] = len(result.status) - result.ok
            del answer["p90_ms"]
            rows.append(row(f"{name} answer @ {rate:g}/s", rate, **answer))
        medians = [percentile(r.latency, 50) or 0.0 for _, r in results]
        metrics[f"{name}_growth"] = round(medians[-1] / medians[0], 2) if medians[0] else 0.0
        series[name] = _timeline(results)
    metrics["relay_flat"] = int(metrics["relay_growth"] <= FLAT)
    metrics["naive_grows"] = int(metrics["naive_growth"] > FLAT)
    metrics["slack_seconds_per_message"] = SLACK_SECONDS
    return {"metrics": metrics, "rows": rows, "series": series}


def _timeline(results: list[tuple[float, LoadResult]]) -> dict[str, list[float]]:
    """Every request as (seconds since the first step began, rate, answer ms)."""
    origin = results[0][1].started
    t, rates, answer = [], [], []
    for rate, result in results:
        for sent, latency in zip(result.sent, result.latency, strict=True):
            t.append(round(sent - origin, 4))
            rates.append(rate)
            answer.append(round(latency * 1000, 3))
    return {"t_s": t, "rate": rates, "answer_ms": answer}
