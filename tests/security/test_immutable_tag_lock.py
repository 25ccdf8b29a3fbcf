"""Pushes to one tag are decided one after the other, however many wait and whenever they come:
the lock a push by tag holds while the policy checks it and the manifest is stored is never
dropped while someone still waits on it, so a push arriving then cannot take a fresh lock and
race the one in progress (two pushes both seeing the tag free, both stored: an immutable tag
moved).

The attacker has push rights and sends pushes to a release tag in waves, hoping one lands in the
moment between one holder leaving and the next one entering."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from policies.gateway import PolicyGate
from registry.context import CONTEXT

POLICY = """\
version: 1
rules:
  - name: release tags are immutable
    match: {repositories: ["**"], tags: ["v*"], on: [push, delete]}
    require: {immutable_tags: true}
"""


@pytest.fixture
async def gate(start_client: Any, tmp_path: Path) -> PolicyGate:
    (tmp_path / "policy.yaml").write_text(POLICY)
    client = await start_client(policy={"file": str(tmp_path / "policy.yaml"), "reload": False})
    return client.server.app[CONTEXT].policy


class Pusher:
    """A push by tag that enters the gate's tag guard and stays inside until told to leave."""

    def __init__(self, gate: PolicyGate, tag: str | None, inside: list[str], name: str) -> None:
        self.entered = asyncio.Event()
        self.leave = asyncio.Event()
        self.task = asyncio.create_task(self._run(gate, tag, inside, name))

    async def _run(self, gate: PolicyGate, tag: str | None, inside: list[str], name: str) -> None:
        async with gate.tag_guard("app/x", tag):
            inside.append(name)
            self.entered.set()
            await self.leave.wait()
            inside.remove(name)


async def settle() -> None:
    """Let every ready task run until it blocks (a free asyncio lock is taken without waiting,
    so a push that is not made to wait is inside after these turns)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def someone_inside(inside: list[str]) -> None:
    """Wait until a push holds the guard (taking it may cross to the database: on PostgreSQL
    an advisory lock is a round trip, not a turn of the loop), then let the others run."""

    async def entered() -> None:
        while not inside:
            await asyncio.sleep(0.005)

    await asyncio.wait_for(entered(), 10)
    await settle()


async def test_a_push_arriving_while_another_waits_waits_too(gate: PolicyGate) -> None:
    inside: list[str] = []
    first = Pusher(gate, "v1", inside, "first")
    await asyncio.wait_for(first.entered.wait(), 10)
    second = Pusher(gate, "v1", inside, "second")
    await settle()
    assert inside == ["first"]  # the second push waits for the first

    first.leave.set()
    await asyncio.wait_for(second.entered.wait(), 10)
    # The first holder has left while the second held on: a push arriving now must wait for
    # the second, not find the tag unlocked.
    third = Pusher(gate, "v1", inside, "third")
    await settle()
    assert inside == ["second"]

    second.leave.set()
    await asyncio.wait_for(third.entered.wait(), 10)
    assert inside == ["third"]
    third.leave.set()
    await asyncio.gather(first.task, second.task, third.task)


async def test_pushes_waiting_together_go_in_one_at_a_time(gate: PolicyGate) -> None:
    inside: list[str] = []
    pushers = {f"push {n}": Pusher(gate, "v1", inside, f"push {n}") for n in range(4)}
    for turn in range(4):
        await someone_inside(inside)
        assert len(inside) == 1, inside
        holder = pushers[inside[0]]
        # Another push arrives while the others wait: it queues behind them.
        if turn == 1:
            pushers["push 4"] = Pusher(gate, "v1", inside, "push 4")
            await settle()
            assert len(inside) == 1, inside
        holder.leave.set()
        await asyncio.wait_for(holder.task, 10)
    await someone_inside(inside)
    assert inside == ["push 4"]
    pushers["push 4"].leave.set()
    await asyncio.gather(*(p.task for p in pushers.values()))


async def test_other_tags_and_pushes_by_digest_are_not_held_up(gate: PolicyGate) -> None:
    inside: list[str] = []
    release = Pusher(gate, "v1", inside, "v1")
    await asyncio.wait_for(release.entered.wait(), 10)
    other = Pusher(gate, "v2", inside, "v2")
    by_digest = Pusher(gate, None, inside, "by digest")
    await asyncio.wait_for(other.entered.wait(), 10)
    await asyncio.wait_for(by_digest.entered.wait(), 10)
    assert sorted(inside) == ["by digest", "v1", "v2"]
    for pusher in (release, other, by_digest):
        pusher.leave.set()
    await asyncio.gather(release.task, other.task, by_digest.task)
