"""agent.hold: a held item serving halves, with a scripted channel (no subprocess).

The real agents hold items in every paired session (tests/test_against.py,
tests/test_docker_plugin.py, tests/test_qemu_plugin.py, tests/test_ssh_env.py).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from pytest_hostperf.agent.hold import HeldItem


class Script:
    """A channel that hands out scripted requests and keeps what was sent."""

    def __init__(self, *requests: dict[str, Any] | None) -> None:
        self.requests = list(requests)
        self.sent: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def receive(self) -> dict[str, Any] | None:
        return self.requests.pop(0)


def runner(calls: list[int]) -> Any:
    def run(loops: range) -> float:
        calls.append(len(loops))
        return 0.002 * len(loops)
    return run


def test_halves_are_served_with_the_runner_until_released() -> None:
    channel = Script({"op": "half", "iterations": 4, "rounds": 2}, {"op": "ping"}, {"op": "half", "iterations": 1},
                     {"op": "release"})
    calls: list[int] = []
    held = HeldItem(channel, "t.py::test_a")  # type: ignore[arg-type]
    assert held.calibrate(runner(calls)) == (1.0, 1, range(1))   # then one round of one call
    assert calls == [4, 4, 1] and held.halves == 2 and not held.closing
    events = [m["event"] for m in channel.sent]
    assert events == ["holding", "half", "pong", "half"]
    assert channel.sent[1]["samples"] == pytest.approx([0.002, 0.002])


@pytest.mark.parametrize("request_", [{"op": "half", "iterations": 0}, {"op": "half", "iterations": True},
                                      {"op": "half", "iterations": 2, "rounds": 10**6}, {"op": "dance"}])
def test_a_bad_request_is_answered_and_the_item_stays_held(request_: dict[str, Any]) -> None:
    channel = Script(request_, {"op": "release"})
    calls: list[int] = []
    HeldItem(channel, "t.py::test_a").calibrate(runner(calls))  # type: ignore[arg-type]
    assert calls == [] and channel.sent[1]["event"] == "half-error"
    message = channel.sent[1]["message"]
    assert ("'iterations' (1-" in message) if request_["op"] == "half" else ("holding t.py::test_a" in message)


@pytest.mark.parametrize("ending", [None, {"op": "shutdown"}])
def test_a_closed_channel_or_shutdown_ends_the_hold_and_the_agent(ending: dict[str, Any] | None) -> None:
    channel = Script(ending)
    held = HeldItem(channel, "t.py::test_a")  # type: ignore[arg-type]
    held.calibrate(runner([]))
    assert held.closing


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this platform")
def test_the_item_is_pinned_while_held_and_unpinned_after() -> None:
    before = os.sched_getaffinity(0)
    cpu = max(before)
    seen: list[set[int]] = []

    def run(loops: range) -> float:
        seen.append(os.sched_getaffinity(0))
        return 0.001

    channel = Script({"op": "half", "iterations": 1}, {"op": "release"})
    HeldItem(channel, "t.py::test_a", cpu=cpu).calibrate(run)  # type: ignore[arg-type]
    assert seen == [{cpu}] and channel.sent[0]["cpu"] == cpu
    assert os.sched_getaffinity(0) == before
    unknown = Script({"op": "release"})
    HeldItem(unknown, "t.py::test_a", cpu=10**6).calibrate(run)  # type: ignore[arg-type]
    assert unknown.sent[0]["cpu"] == max(before)   # a CPU it may not use: its own highest
