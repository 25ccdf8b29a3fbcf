"""The `signature` requirement's arithmetic, attacked with recorded proofs: what a pusher can get
counted by writing signatures that almost fit (a signer nobody asked for, one signer twice, a
signature for a repository that sorts next to this one, an expired certificate, another kind of
attestation), and the exact words of each refusal.

The proofs are built in memory (`Finding`, as the verifiers record them) and judged by the
requirement through its public `evaluate`, the way the engine calls it: the verifiers that
produce findings are attacked in their own files (`test_keyless_identity.py`,
`test_cosign_payloads.py`, `test_bundle_log_entries.py`).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from policies.decisions import Action, Decision
from policies.facts import ImageFacts, PolicyRequest
from policies.rules import Context
from policies.signature_rule import SignatureRequirement
from policies.signatures.findings import Finding
from policies.signatures.proofs import SignatureEvidence
from policies.signatures.trust import TrustConfig

IMAGE = "sha256:" + "ab" * 32
CHILD_A = "sha256:" + "a1" * 32
CHILD_B = "sha256:" + "b2" * 32
PARENT = "sha256:" + "cd" * 32
TRUST = TrustConfig(version="sha256:mutation-tests")
REPOSITORY = "team/app"


def requirement(**spec: Any) -> SignatureRequirement:
    """The requirement the loader builds from a schema-valid `signature:` mapping."""
    return SignatureRequirement.build(spec or {"any_of": ["release"]}, TRUST)


def signed(signer: str | None, n: int = 1, **fields: Any) -> Finding:
    """A finding by `signer` (a valid one unless `valid=False`), signature number `n`."""
    valid = fields.pop("valid", signer is not None)
    return Finding(f"sha256:{n:064x}", "cosign", valid, signer, **fields)


def judge(
    need: SignatureRequirement,
    *image: Finding,
    action: Action = Action.PULL,
    repository: str = REPOSITORY,
    children: dict[str, tuple[Finding, ...]] | None = None,
    parents: dict[str, tuple[Finding, ...]] | None = None,
    evidence: bool = True,
    is_artifact: bool = False,
) -> Decision:
    proofs = SignatureEvidence(tuple(image), children or {}, parents or {})
    facts = ImageFacts(
        IMAGE,
        "application/vnd.oci.image.manifest.v1+json",
        is_artifact=is_artifact,
        signatures={TRUST.version: proofs} if evidence else {},
    )
    request = PolicyRequest(action, repository, "v1", IMAGE, ("v1",))
    return need.evaluate(Context(request, facts, ("v1",)))


def refused(decision: Decision, reason: str) -> None:
    assert not decision.allowed, decision.reason
    assert decision.reason == reason


# -- who signed --------------------------------------------------------------------------------


def test_a_signer_nobody_asked_for_does_not_count() -> None:
    refused(
        judge(requirement(), signed("ci")),
        "needs a signature by release; found 1 signature, by ci, not one of the required signers",
    )


def test_an_invalid_signature_naming_a_wanted_signer_does_not_count() -> None:
    forged = signed("release", valid=False, detail="by an unknown key (sha256:0000…)")
    refused(
        judge(requirement(), forged),
        "needs a signature by release; found 1 signature, by an unknown key (sha256:0000…)",
    )


def test_one_signer_twice_is_not_a_quorum() -> None:
    need = requirement(at_least=2, of=["release", "ci", "qa"])
    refused(
        judge(need, signed("release", 1), signed("release", 2)),
        "needs signatures by at least 2 of release, ci and qa; found 2 signatures, by release; "
        "by release",
    )
    allowed = judge(need, signed("release", 1), signed("qa", 2))
    assert allowed.allowed and allowed.reason == "signed: by release; by qa"


def test_all_of_needs_every_signer() -> None:
    need = requirement(all_of=["release", "ci"])
    refused(
        judge(need, signed("ci")),
        "needs signatures by release and ci; found 1 signature, by ci",
    )
    assert judge(need, signed("ci", 1), signed("release", 2)).allowed


def test_no_signature_and_unreadable_signatures_are_refused() -> None:
    refused(judge(requirement()), "needs a signature by release; found no signature")
    refused(
        judge(requirement(), signed("release"), evidence=False),
        "needs a signature by release; signatures could not be read",
    )


def test_one_signature_seen_twice_reads_once_and_its_proof_wins() -> None:
    """The same signature verified under two signers: the finding that proves reads."""
    unknown = signed(None, 7, detail="by an unknown key (sha256:0000…)")
    proof = signed("release", 7)
    decision = judge(requirement(), unknown, proof)
    assert decision.allowed and decision.reason == "signed: by release"
    refused(
        judge(requirement(all_of=["release", "ci"]), proof, unknown),
        "needs signatures by release and ci; found 1 signature, by release",
    )


def test_the_rule_is_enforced_at_pull_and_spares_artifacts() -> None:
    for action in (Action.PUSH, Action.DELETE):
        decision = judge(requirement(), action=action)
        assert decision.allowed
        assert decision.reason == "signatures are checked at pull (images are signed after push)"
    artifact = judge(requirement(), is_artifact=True)
    assert artifact.allowed
    assert artifact.reason == "not a container image; signatures do not apply"


# -- what was signed ---------------------------------------------------------------------------

#: Repositories that sort before and after `team/app`, and a prefix and an extension of it.
ELSEWHERE = ["team/aaa", "team/zzz", "team/ap", "team/app2", "team"]


@pytest.mark.parametrize("other", ELSEWHERE)
@pytest.mark.parametrize("setting", [None, True])
def test_a_signature_for_another_repository_does_not_count(
    other: str, setting: bool | None
) -> None:
    spec: dict[str, Any] = {"any_of": ["release"]}
    if setting is not None:
        spec["docker_reference"] = setting
    finding = signed("release", docker_reference=f"registry.example.com/{other}:v1")
    refused(
        judge(requirement(**spec), finding),
        f"needs a signature by release; found 1 signature, by release but for repository {other}",
    )


def test_a_signature_for_this_repository_counts_whatever_the_host() -> None:
    for setting in (None, True, False):
        spec: dict[str, Any] = {"any_of": ["release"]}
        if setting is not None:
            spec["docker_reference"] = setting
        finding = signed("release", docker_reference=f"mirror.example.org:5000/{REPOSITORY}:v1")
        assert judge(requirement(**spec), finding).allowed, setting


def test_docker_reference_true_refuses_a_signature_over_the_digest_only() -> None:
    refused(
        judge(requirement(any_of=["release"], docker_reference=True), signed("release")),
        "needs a signature by release; found 1 signature, by release but signs no repository "
        "name (docker_reference: true requires one)",
    )
    assert judge(requirement(any_of=["release"]), signed("release")).allowed


def test_docker_reference_false_does_not_compare() -> None:
    finding = signed("release", docker_reference="registry.example.com/team/zzz:v1")
    assert judge(requirement(any_of=["release"], docker_reference=False), finding).allowed


def test_only_the_named_attestation_counts() -> None:
    slsa = "https://slsa.dev/provenance/v1"
    need = requirement(any_of=["release"], predicate_type=slsa)
    refused(
        judge(need, signed("release")),
        f"needs a signature by release (a {slsa} attestation); found 1 signature, by release but "
        f"a plain signature, not {slsa}",
    )
    other = "https://spdx.dev/Document"
    refused(
        judge(need, signed("release", predicate_type=other)),
        f"needs a signature by release (a {slsa} attestation); found 1 signature, by release but "
        f"{other}, not {slsa}",
    )
    assert judge(need, signed("release", predicate_type=slsa)).allowed


# -- when --------------------------------------------------------------------------------------


def test_an_expired_proof_does_not_count() -> None:
    ended = time.time() - 60
    shown = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ended))
    refused(
        judge(requirement(), signed("release", valid_until=ended)),
        "needs a signature by release; found 1 signature, by release but its certificate or "
        f"signature expired at {shown}",
    )


def test_an_allow_lasts_as_long_as_the_proofs_it_needs() -> None:
    now = time.time()
    soon, later = now + 600, now + 7200
    one = judge(requirement(), signed("release", 1, valid_until=soon))
    assert one.allowed and one.valid_until == soon
    # Two proofs of one signer: the longer-lived one is kept.
    two = judge(
        requirement(),
        signed("release", 1, valid_until=soon),
        signed("release", 2, valid_until=later),
    )
    assert two.allowed and two.valid_until == later
    forever = judge(requirement(), signed("release", 1, valid_until=soon), signed("release", 2))
    assert forever.allowed and forever.valid_until is None
    # A quorum of two relies on both: it ends with the first to expire.
    both = judge(
        requirement(all_of=["release", "ci"]),
        signed("release", 1, valid_until=later),
        signed("ci", 2, valid_until=soon),
    )
    assert both.allowed and both.valid_until == soon
    # Two of three: the two longest-lived proofs are the ones relied on.
    best = judge(
        requirement(at_least=2, of=["release", "ci", "qa"]),
        signed("release", 1, valid_until=soon),
        signed("ci", 2, valid_until=later),
        signed("qa", 3),
    )
    assert best.allowed and best.valid_until == later


# -- indexes -----------------------------------------------------------------------------------


def test_a_signed_parent_index_covers_the_image_only_with_a_proof() -> None:
    decision = judge(requirement(), parents={PARENT: (signed("release"),)})
    assert decision.allowed
    assert decision.reason == "its index sha256:cdcdcdcdcdcd… is signed"
    refused(
        judge(requirement(), parents={PARENT: (signed("ci"),)}),
        "needs a signature by release; found no signature",
    )


def test_every_platform_needs_every_platform_image_signed() -> None:
    need = requirement(any_of=["release"], every_platform=True)
    children = {CHILD_A: (signed("release", 1),), CHILD_B: (signed("ci", 2),)}
    refused(
        judge(need, children=children),
        "needs a signature by release on the index or on every platform image; 1 of 2 platform "
        "images are not signed (first: sha256:b2b2b2b2b2b2…)",
    )
    children[CHILD_B] = (signed("release", 2),)
    decision = judge(need, children=children)
    assert decision.allowed and decision.reason == "every platform image is signed"
    # Without every_platform, signed platform images do not stand for the index.
    refused(
        judge(requirement(), children=children),
        "needs a signature by release; found no signature",
    )
