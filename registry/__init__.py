"""Trustyard's HTTP face: the OCI Distribution API, its configuration and command line."""
