"""Signature verification for the `signature` policy rule, entirely offline.

The public surface is small: `trust` (who is trusted: keys, certificate authorities, keyless
identities), `verify` (every signature of an image, checked against a trust config), `proofs`
(what was proved, recorded per image in the metadata database); the requirement the loader builds
is `policies.signature_rule`, above the facts that gather the proofs. The format modules each
hold one format, byte for byte as the tools write it:

* `simple_signing`: cosign's payload and layer under `sha256-<hex>.sig`, and key verification;
* `cosign`: what such a layer proves, with a public key (and its Rekor bundle) or keyless;
* `keyless`: the same signatures with a Fulcio certificate and a Rekor signed entry timestamp;
* `bundles`: Sigstore bundles (v0.1 to v0.3) in OCI referrers, with or without a certificate;
* `notation`: Notary Project JWS and COSE envelopes in OCI referrers;
* `discovery`: where signatures of an image live in the registry.
"""
