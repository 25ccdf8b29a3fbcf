"""Events out: what happened in the registry, as CloudEvents, delivered to configured endpoints.

A sink chain that survives restarts: handlers describe an `Event` (`cloudevents`); the `Outbox`
writes one row per interested endpoint in the same database transaction as the change it reports
(`outbox`); the `Sender` delivers the rows in order per repository with retries and exponential
backoff, signing each body (`signing`, `sender`). Pulls are sampled or aggregated (`pulls`).
"""
