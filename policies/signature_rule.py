"""The `signature` requirement: which trusted signers must have signed the image.

```yaml
require:
  signature: {any_of: [release, gha-release]}   # or all_of: [...], or at_least: 2, of: [...]
                                                # docker_reference: true|false, every_platform: true
                                                # predicate_type: https://slsa.dev/provenance/v1
```

`docker_reference` (the signed reference must name this repository, as containers policy.json's
`matchRepoDigestOrExact`) has three settings:

* not written (the default): a signature that signs a reference (cosign simple signing's
  `docker-reference`, an in-toto subject name that names a repository) counts only when that
  reference names this repository; a signature that signs the digest alone (a Sigstore bundle
  over the digest, a Notation signature) counts;
* `true`: only a signature that signs a reference naming this repository counts;
* `false`: the signed reference is not compared.

Only the repository path is compared, not the registry host (clients reach one registry by
several names). A proof that expires (a certificate checked at "now") holds until it does: an
allow carries the earliest expiry of the proofs it relied on (`valid_until`).

It reads recorded proofs (`policies.signatures.proofs`), gathered before evaluation like every
other costly fact, so `evaluate` is plain code over data in memory. Images are pushed first and
signed right after, so on push it always holds: the rule is enforced at pull.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from policies.decisions import Action, Decision, earliest
from policies.rules import Context
from policies.signatures.findings import Finding, short
from policies.signatures.proofs import SignatureEvidence, register_trust
from policies.signatures.references import names_repository_for, repository_of
from policies.signatures.trust import TrustConfig


def _names(names: Iterable[str], joiner: str) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {joiner} {names[-1]}"


@dataclass(frozen=True)
class SignatureRequirement:
    """At least `count` of `signers` must have signed the image (any_of: 1, all_of: all)."""

    signers: tuple[str, ...]
    count: int
    trust: TrustConfig
    docker_reference: bool | None = None  # None: compared when signed; True: required; False: off
    every_platform: bool = False
    needs: frozenset[str] = field(default=frozenset())
    predicate_type: str | None = None  # only in-toto attestations of this type count

    @classmethod
    def build(cls, spec: Mapping[str, Any], trust: TrustConfig) -> SignatureRequirement:
        """From the schema-valid `signature:` mapping."""
        if "all_of" in spec:
            signers, count = tuple(spec["all_of"]), len(spec["all_of"])
        elif "any_of" in spec:
            signers, count = tuple(spec["any_of"]), 1
        else:
            signers, count = tuple(spec["of"]), int(spec["at_least"])
        return cls(
            signers,
            count,
            trust,
            None if spec.get("docker_reference") is None else bool(spec["docker_reference"]),
            bool(spec.get("every_platform", False)),
            frozenset({register_trust(trust)}),
            spec.get("predicate_type"),
        )

    def wanted(self) -> str:
        """`a signature by release or gha-release`, `signatures by release and ci`, ..."""
        of = f" (a {self.predicate_type} attestation)" if self.predicate_type else ""
        if self.count == 1:
            return f"a signature by {_names(self.signers, 'or')}{of}"
        if self.count == len(self.signers):
            return f"signatures by {_names(self.signers, 'and')}{of}"
        return f"signatures by at least {self.count} of {_names(self.signers, 'and')}{of}"

    def _reference_problem(self, f: Finding, repository: str) -> str | None:
        """Why a valid finding's signed reference does not let it count here, or None."""
        if self.docker_reference is False:
            return None
        if f.docker_reference is None:
            if self.docker_reference:
                return (
                    f"by {f.signer} but signs no repository name (docker_reference: true "
                    "requires one)"
                )
            return None
        if not names_repository_for(f.docker_reference, repository):
            return f"by {f.signer} but for repository {repository_of(f.docker_reference)}"
        return None

    def _proved(
        self, findings: Iterable[Finding], repository: str, now: float
    ) -> tuple[dict[str, float | None], list[str]]:
        """The wanted signers these findings prove (each with when its proof ends), and how
        each signature reads in a message."""
        proved: dict[str, float | None] = {}
        seen: dict[str, str] = {}
        for f in findings:
            text = f.describe()
            ok = f.valid and f.signer in self.signers
            if ok and not f.counts_at(now):
                ok = False
                assert f.valid_until is not None
                ended = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(f.valid_until))
                text = f"by {f.signer} but its certificate or signature expired at {ended}"
            problem = self._reference_problem(f, repository) if ok else None
            if problem is not None:
                ok = False
                text = problem
            if ok and self.predicate_type and f.predicate_type != self.predicate_type:
                ok = False
                what = f.predicate_type or "a plain signature"
                text = f"by {f.signer} but {what}, not {self.predicate_type}"
            if ok:
                signer = str(f.signer)
                until = f.valid_until
                if signer in proved:  # any proof of this signer will do: keep the longest
                    known = proved[signer]
                    until = None if known is None or until is None else max(known, until)
                proved[signer] = until
            elif f.valid and f.signer not in self.signers and text == f.describe():
                text = f"by {f.signer}, not one of the required signers"
            if f.signature_digest not in seen or ok:
                seen[f.signature_digest] = text
        return proved, list(seen.values())

    def _holds(
        self, findings: Iterable[Finding], repository: str, now: float
    ) -> tuple[bool, list[str], float | None]:
        """Whether the findings hold the requirement, how they read, and until when."""
        proved, found = self._proved(findings, repository, now)
        if len(proved) < self.count:
            return False, found, None
        # The allow relies on the `count` longest-lived proofs (one that never ends first); it
        # ends with the first of them.
        ends = sorted(proved.values(), key=lambda t: float("-inf") if t is None else -t)
        return True, found, earliest(ends[: self.count])

    def evaluate(self, context: Context) -> Decision:
        """Allow when enough wanted signers signed the image (or, as asked, every platform)."""
        image = context.image
        if context.request.action is not Action.PULL:
            return Decision.allow("signatures are checked at pull (images are signed after push)")
        if image.is_artifact:
            return Decision.allow("not a container image; signatures do not apply")
        evidence: SignatureEvidence | None = (image.signatures or {}).get(self.trust.version)
        if evidence is None:
            return Decision.deny(f"needs {self.wanted()}; signatures could not be read")
        repository = context.request.repository
        now = time.time()
        held, found, until = self._holds(evidence.image, repository, now)
        if held:
            return Decision.allow(f"signed: {'; '.join(found)}", valid_until=until)
        for parent, findings in evidence.parents.items():
            parent_held, _, parent_until = self._holds(findings, repository, now)
            if parent_held:
                return Decision.allow(
                    f"its index {short(parent)} is signed", valid_until=parent_until
                )
        if self.every_platform and evidence.children:
            held_children = {
                d: self._holds(f, repository, now) for d, f in evidence.children.items()
            }
            missing = [d for d, h in held_children.items() if not h[0]]
            if not missing:
                return Decision.allow(
                    "every platform image is signed",
                    valid_until=earliest(h[2] for h in held_children.values()),
                )
            return Decision.deny(
                f"needs {self.wanted()} on the index or on every platform image; "
                f"{len(missing)} of {len(evidence.children)} platform images are not signed "
                f"(first: {short(missing[0])})"
            )
        if not found:
            return Decision.deny(f"needs {self.wanted()}; found no signature")
        count = f"{len(found)} signature{'s' if len(found) > 1 else ''}"
        return Decision.deny(f"needs {self.wanted()}; found {count}, {'; '.join(found)}")
