"""The pull-through proxy: upstream registries served read-only under namespace prefixes.

`settings` reads the configuration, `client` speaks to upstreams (auth, TLS, timeouts),
`manifests` and `blobs` cache what clients pull, `routing` is the one hook the `/v2/` router
calls, and `identity` maps a proxied name back to its upstream one for signature checks.
"""
