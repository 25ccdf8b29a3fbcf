"""The floor under every floor: small readers of what operators write (durations, moments,
glob patterns) that `storage/`, `policies/` and `registry/` may all use. Nothing here imports
any of them."""
