"""Attack tests: what a client with push rights, a puller, a scanner or an anonymous caller tries
against the gateway, each asserting the precise refusal."""
