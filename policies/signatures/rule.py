"""The `signature` requirement: which trusted signers must have signed the image.

```yaml
require:
  signature: {any_of: [release, gha-release]}   # or all_of: [...], or at_least: 2, of: [...]
                                                # docker_reference: true, every_platform: true
                                                # predicate_type: https://slsa.dev/provenance/v1
```

It reads recorded proofs (`policies.signatures.proofs`), gathered before evaluation like every
other costly fact, so `evaluate` is plain code over data in memory. Images are pushed first and
signed right after, so on push it always holds: the rule is enforced at pull.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from policies.decisions import Action, Decision
from policies.rules import Context
from policies.signatures.cosign import repository_of
from policies.signatures.findings import Finding, short
from policies.signatures.proofs import SignatureEvidence, register_trust
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
    docker_reference: bool = False
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
            bool(spec.get("docker_reference", False)),
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

    def _proved(self, findings: Iterable[Finding], repository: str) -> tuple[set[str], list[str]]:
        """The wanted signers these findings prove, and how each signature reads in a message."""
        proved: set[str] = set()
        seen: dict[str, str] = {}
        for f in findings:
            text = f.describe()
            ok = f.valid and f.signer in self.signers
            if ok and self.docker_reference and f.docker_reference is not None:
                signed_for = repository_of(f.docker_reference)
                if signed_for != repository:
                    ok = False
                    text = f"by {f.signer} but for repository {signed_for}"
            if ok and self.predicate_type and f.predicate_type != self.predicate_type:
                ok = False
                what = f.predicate_type or "a plain signature"
                text = f"by {f.signer} but {what}, not {self.predicate_type}"
            if ok:
                proved.add(str(f.signer))
            elif f.valid and f.signer not in self.signers and text == f.describe():
                text = f"by {f.signer}, not one of the required signers"
            if f.signature_digest not in seen or ok:
                seen[f.signature_digest] = text
        return proved, list(seen.values())

    def _holds(self, findings: Iterable[Finding], repository: str) -> tuple[bool, list[str]]:
        proved, found = self._proved(findings, repository)
        return len(proved) >= self.count, found

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
        held, found = self._holds(evidence.image, repository)
        if held:
            return Decision.allow(f"signed: {'; '.join(found)}")
        for parent, findings in evidence.parents.items():
            if self._holds(findings, repository)[0]:
                return Decision.allow(f"its index {short(parent)} is signed")
        if self.every_platform and evidence.children:
            missing = [d for d, f in evidence.children.items() if not self._holds(f, repository)[0]]
            if not missing:
                return Decision.allow("every platform image is signed")
            return Decision.deny(
                f"needs {self.wanted()} on the index or on every platform image; "
                f"{len(missing)} of {len(evidence.children)} platform images are not signed "
                f"(first: {short(missing[0])})"
            )
        if not found:
            return Decision.deny(f"needs {self.wanted()}; found no signature")
        count = f"{len(found)} signature{'s' if len(found) > 1 else ''}"
        return Decision.deny(f"needs {self.wanted()}; found {count}, {'; '.join(found)}")
