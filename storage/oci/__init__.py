"""The OCI vocabulary every floor speaks: digests, names and tags, media types, the parsed
manifest, what a manifest is, the strict JSON reader and the spec's error codes.

Nothing here knows HTTP, a database or a policy; `storage/`, `policies/` and `registry/` all
build on it.
"""
