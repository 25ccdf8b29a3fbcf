"""End-to-end tests: real clients (docker, podman, skopeo, oras) against a real Trustyard."""
