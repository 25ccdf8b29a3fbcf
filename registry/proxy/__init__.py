"""The pull-through proxy: upstream registries served read-only under namespace prefixes.

`registry.upstream_settings` reads the configuration; here `client` speaks to upstreams (auth,
TLS, timeouts), `manifests` and `blobs` cache what clients pull, `store` is the one way a pulled
manifest is stored, `eviction` keeps the cache under its limit, `sync` is `library sync`, and
`routing` is the one hook the `/v2/` router calls. Signed references of proxied names are mapped
back to their upstream ones in `policies.signatures.references`.
"""
