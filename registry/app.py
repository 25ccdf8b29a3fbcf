"""Assemble the aiohttp application: open the stores, mount the API, start background work."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from policies.decisions import Action
from policies.engine import Policy
from policies.gateway import PolicyGate, startup_policy
from registry.api_routes import add_api_routes
from registry.auth import setup_auth
from registry.auth.middleware import auth_middleware
from registry.auth.settings import AuthSettings
from registry.config import Config
from registry.console import setup_console
from registry.context import CONTEXT, PIPELINE, RegistryContext
from registry.events.hub import EVENTS, EventHub
from registry.events.settings import EventSettings
from registry.health import add_health_routes
from registry.heap import heap_metrics
from registry.logs import add_request_id_header, request_id_middleware
from registry.metrics import METRICS, Metrics, metrics_middleware
from registry.middleware import (
    IN_FLIGHT,
    InFlight,
    error_middleware,
    in_flight_middleware,
    query_text_middleware,
)
from registry.pipeline import ManifestPipeline
from registry.proxy.routing import setup_proxy
from registry.replica_files import (
    FilesDiffer,
    FilesWatch,
    instance_name,
    refuse_to_join,
    users_digest,
)
from registry.routes import add_fallback, add_routes
from registry.upload_sessions import UploadSessions
from registry.workers import LEADER, WorkerRole, worker_metrics
from storage import reserve
from storage.backends import open_blob_store
from storage.layout import DataLayout
from storage.metadata import GenerationWatch, open_metadata

log = logging.getLogger(__name__)

ANONYMOUS_QUARANTINE_WARNING = (
    "authentication is off: every caller is anonymous, so nobody is a producer and an image "
    "quarantined by the pull rules cannot be read even by its signer (cosign sign, sigstore "
    "attach and notation sign read the image first). Turn on auth with a CI account allowed to "
    "push: it may then read and sign what it pushed while deployers stay refused. "
    "(quarantine.readable_by.users: [anonymous] would open quarantined images to every caller.)"
)


def create_app(
    config: Config, policy: Policy | None = None, worker: WorkerRole | None = None
) -> web.Application:
    """The registry application for `config` (resources open when the app starts); `policy` is
    the one `config` names when the caller has loaded it already (else it is loaded at start);
    `worker`: which of `serve --workers N` this process is (only the leader runs the work that
    must happen once per registry: `registry.workers`)."""
    app = web.Application(
        middlewares=[
            request_id_middleware,
            in_flight_middleware,
            metrics_middleware,
            error_middleware,
            auth_middleware,
            query_text_middleware,
        ],
        client_max_size=4 * 1024 * 1024 + 1,
    )
    app.on_response_prepare.append(add_request_id_header)
    app[IN_FLIGHT] = InFlight()
    app[METRICS] = Metrics()
    app[LEADER] = worker is None or worker.leader
    app[METRICS].sections.append(heap_metrics)
    if worker is not None:
        app[METRICS].sections.append(worker_metrics(worker))
    app.cleanup_ctx.append(_resources(config, policy))
    setup_proxy(app, config)  # after the resources it uses: closed before them
    add_routes(app)
    add_health_routes(app)
    setup_auth(app, config)
    add_api_routes(app)
    setup_console(app)
    add_fallback(app)  # last: every other route first
    return app


def _resources(config: Config, loaded: Policy | None):  # noqa: ANN202 - aiohttp's cleanup_ctx
    async def resources(app: web.Application) -> AsyncIterator[None]:
        # First, so that an invalid policy stops start-up before anything is opened.
        policy = startup_policy(config.policy_file) if loaded is None else loaded
        store = open_blob_store(config.blob_store)
        db = await open_metadata(DataLayout(config.data_dir).database, config.metadata_url)
        # A replica never joins others that decide by another policy or users file.
        users_file = AuthSettings.from_config(config).users_file if config.auth_enabled else None
        me = instance_name()
        try:
            await refuse_to_join(
                db, {"policy": policy.version, "users": users_digest(users_file)}, me
            )
        except FilesDiffer:
            await db.close()
            await store.close()
            raise
        # Room for `trustyard gc` to work in should the disk fill up (storage.reserve).
        await asyncio.to_thread(reserve.ensure, DataLayout(config.data_dir))
        uploads = UploadSessions(db, store)
        gate = PolicyGate(db, store, policy, path=config.policy_file)
        gate.start(poll_interval=config.policy_poll_interval)
        gate.observers.append(app[METRICS].count_decision)
        # Evidence another worker or replica changed reaches this one's caches within 250 ms.
        evidence = GenerationWatch(db, "evidence", gate.forget_evidence)
        await evidence.check()
        evidence.start()
        files = FilesWatch(
            db, lambda: {"policy": gate.policy.version, "users": users_digest(users_file)}, me
        )
        await files.check()
        files.start()
        app[CONTEXT] = RegistryContext(config, db, store, uploads, gate)
        # Events: the sender starts with whatever an earlier run left in the outbox.
        events = app[EVENTS] = EventHub(db, EventSettings.from_config(config))
        # One sender per registry: rows other workers commit are found by its poll.
        events.start(deliver=app[LEADER])
        app[PIPELINE] = ManifestPipeline(db, store, gate, events)
        cleaner = (
            asyncio.create_task(_clean_stale_uploads(config, uploads)) if app[LEADER] else None
        )
        log.info("serving data directory %s", config.data_dir.resolve())
        if not config.auth_enabled and any(
            Action.PULL in rule.match.actions for rule in policy.rules
        ):
            log.warning(ANONYMOUS_QUARANTINE_WARNING)
        try:
            yield
        finally:
            if cleaner is not None:
                cleaner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await cleaner
            await uploads.close()
            await events.close()
            await evidence.close()
            await files.close()
            await gate.close()
            await db.close()
            await store.close()
            log.info("database closed")

    return resources


async def _clean_stale_uploads(config: Config, uploads: UploadSessions) -> None:
    """Drop upload sessions older than `uploads.stale_after`, every `cleanup_interval`."""
    while True:
        try:
            cutoff = time.time() - config.stale_upload_age
            for upload_id in await uploads.db.uploads_started_before(cutoff):
                if await uploads.drop_stale(upload_id):
                    log.info("dropped stale upload %s", upload_id)
        except Exception:
            log.exception("stale upload cleanup failed")
        await asyncio.sleep(config.upload_cleanup_interval)
