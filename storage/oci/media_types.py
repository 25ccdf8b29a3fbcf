"""The media types of the OCI and Docker manifests, image configs and signature payloads.

Named once here, so the registry, the policy rules and storage spell each type the same way.
"""

from __future__ import annotations

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)

IMAGE_MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEXES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_MEDIA_TYPES = IMAGE_MANIFESTS | INDEXES

#: Config media types that docker or containers/image pull as an image config.
RUNTIME_CONFIG_TYPES = frozenset(
    {
        "application/vnd.docker.container.image.v1+json",
        "application/vnd.oci.image.config.v1+json",
        "application/octet-stream",
        "application/json",
        "text/html",
        "",
    }
)

#: Cosign's simple-signing payload, DSSE and in-toto envelopes, Sigstore bundles.
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE_ENVELOPE = "application/vnd.dsse.envelope.v1+json"
IN_TOTO = "application/vnd.in-toto+json"
SIGSTORE_BUNDLE_TYPES = frozenset(
    {
        "application/vnd.dev.sigstore.bundle.v0.3+json",
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle+json;version=0.1",
    }
)
#: Notation's JWS and COSE envelopes.
NOTATION_ENVELOPES = frozenset({"application/jose+json", "application/cose"})
#: Layer media types that hold only a signature or an attestation, never a filesystem.
SIGNATURE_PAYLOAD_TYPES = (
    frozenset({SIMPLE_SIGNING, DSSE_ENVELOPE, IN_TOTO}) | SIGSTORE_BUNDLE_TYPES | NOTATION_ENVELOPES
)
