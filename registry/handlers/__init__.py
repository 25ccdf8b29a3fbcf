"""One module per resource of the OCI Distribution API, each reading like its spec section."""
