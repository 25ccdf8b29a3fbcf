"""Two replicas racing to create one immutable tag: exactly one push is answered 201, every other
the immutable-tag refusal naming the winner, on both backends.

Each replica decides a push under the tag's guard, which holds the tag's lock in the metadata
database (`storage.metadata.coordination`) from the policy check to the commit, so the second
push's check sees the first one's tag."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tests.oci import OCI_MANIFEST, error_codes
from tests.replicas.conftest import StartReplicas
from tests.replicas.images import IMMUTABLE_RELEASES, image_manifest

#: Tags raced for, and the contenders per tag (half through each replica).
ROUNDS = 8
CONTENDERS = 6


async def test_two_replicas_racing_for_an_immutable_tag_give_exactly_one_201(
    tmp_path: Path, start_replicas: StartReplicas
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(IMMUTABLE_RELEASES)
    replicas = start_replicas("--policy", str(policy))
    async with (
        aiohttp.ClientSession(base_url=replicas.a.url) as a,
        aiohttp.ClientSession(base_url=replicas.b.url) as b,
    ):
        sessions = (a, b)
        bodies = [
            await image_manifest(a, "team/app", n, "race") for n in range(ROUNDS * CONTENDERS)
        ]

        async def put(session: aiohttp.ClientSession, tag: str, body: bytes) -> tuple[int, dict]:
            async with session.put(
                f"/v2/team/app/manifests/{tag}", data=body, headers={"Content-Type": OCI_MANIFEST}
            ) as resp:
                answer = {} if resp.status == 201 else await resp.json()
                if resp.status == 201:
                    answer = {"digest": resp.headers["Docker-Content-Digest"]}
                return resp.status, answer

        for round_ in range(ROUNDS):
            tag = f"v{round_}"
            contenders = bodies[round_ * CONTENDERS : (round_ + 1) * CONTENDERS]
            answers = await asyncio.gather(
                *(put(sessions[i % 2], tag, body) for i, body in enumerate(contenders))
            )
            statuses = sorted(status for status, _ in answers)
            assert statuses == [201] + [403] * (CONTENDERS - 1), answers
            [winner] = [answer["digest"] for status, answer in answers if status == 201]
            for status, answer in answers:
                if status == 403:
                    assert error_codes(answer) == ["DENIED"]
                    assert answer["errors"][0]["message"] == (
                        f'rule "release tags are immutable": tag {tag} already points to '
                        f"{winner[:19]}…; push a new tag"
                    )
            # Both replicas serve the winner under the tag.
            for session in sessions:
                async with session.head(
                    f"/v2/team/app/manifests/{tag}", headers={"Accept": OCI_MANIFEST}
                ) as resp:
                    assert resp.status == 200
                    assert resp.headers["Docker-Content-Digest"] == winner
