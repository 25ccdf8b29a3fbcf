"""Mutation testing of the security-critical modules with cosmic-ray.

    python3 tests/mutation/run.py                # every target (long: tens of minutes)
    python3 tests/mutation/run.py auth keyless   # some targets
    python3 tests/mutation/run.py --smoke        # the CI subset: every mutant must be killed
    python3 tests/mutation/run.py --list         # the targets and their test files
    python3 tests/mutation/run.py keyless --operator ExceptionReplacer
                                                 # only the narrowed exception handlers
    python3 tests/mutation/run.py --recheck .mutation/keyless--keyless.sqlite
                                                 # only that session's survivors, current tests
    python3 tests/mutation/run.py auth-service --recheck .mutation/auth-service--service.sqlite
                                                 # ... judged by that target's tests
    python3 tests/mutation/run.py rules --module policies/gateway.py \
        --resume .mutation/rules--gateway.sqlite # keep an interrupted run's results; run the rest

Each target pairs modules with the test files that guard them, so a mutant is judged by the tests
that claim to cover it and a run stays short. cosmic-ray edits the source in place: this script
runs it in a throw-away copy of the work tree (the files git knows, plus untracked ones), never in
the tree itself, so an interrupted run cannot leave a mutant behind; stopped by SIGTERM or
SIGINT (in every mode, `--recheck` too), it kills every process it started, at any depth, then
removes the copy. Operators are limited to the
ones that can change a decision (comparisons, `not`, `and`/`or`, booleans, loops, exception
handlers); arithmetic and constant swaps are left out. Survivors are printed with their diff;
`docs/mutation.md` lists the ones judged equivalent and why.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Target:
    """Modules to mutate, the tests that must kill their mutants, and optionally the one
    function (of a one-module target) whose mutants count."""

    modules: tuple[str, ...]
    tests: tuple[str, ...]
    function: str | None = None
    #: Plain synchronous unit tests: no pytest plugins loaded (a second a mutant, not several).
    bare: bool = False
    #: Test ids left out: tests that drive server subprocesses (the fork server would run them
    #: for every mutant) and whose decisions in-process tests of the same files also make.
    deselect: tuple[str, ...] = ()


PYTEST_ARGS = "-x -q -p no:cacheprovider"
#: A pytest started afresh for each mutant (`--no-fork`) first defines the name cosmic-ray's
#: `ExceptionReplacer` writes into a narrowed handler (tests/mutation/exception_name.py).
PYTEST = f"{sys.executable} -m pytest -p tests.mutation.exception_name {PYTEST_ARGS}"
FORK = "tests/mutation/forkserver.py"
#: cosmic-ray and its filters, run by this interpreter (their scripts may not be on PATH).
COSMIC_RAY = [sys.executable, "-m", "cosmic_ray.cli"]
FILTER_OPERATORS = [sys.executable, "-m", "cosmic_ray.tools.filters.operators_filter"]
FILTER_LINES = [sys.executable, "-m", "cosmic_ray.tools.filters.line_filter"]
BARE = "env PYTEST_DISABLE_PLUGIN_AUTOLOAD=1"

#: The tests of the policy engine (`rules`); `gateway` runs those of them that reach it.
RULES_TESTS = (
    "tests/policies/test_rules.py",
    "tests/security/test_image_claims.py",
    "tests/security/test_unreadable_config.py",
    "tests/security/test_engine_fail_closed.py",
    "tests/security/test_image_classification.py",
    "tests/security/test_side_doors.py",
    "tests/security/test_quarantine_reads.py",
    "tests/security/test_stale_evidence.py",
    "tests/registry/test_policy_enforcement.py",
    "tests/library/test_library_api.py",
    "tests/security/test_expired_verdicts.py",
    "tests/security/test_decision_log_flush.py",
    "tests/security/test_decision_log_failures.py",
    "tests/security/test_evidence_races.py",
    "tests/security/test_blob_delete_races.py",
    "tests/security/test_quarantine_reader_scope.py",
    "tests/security/test_policy_watch.py",
    "tests/security/test_denial_messages.py",
    "tests/security/test_config_read_failures.py",
    "tests/security/test_config_storage_errors.py",
    "tests/security/test_immutable_tag_lock.py",
    "tests/security/test_lost_tag_lock.py",
    "tests/security/test_decision_log_shutdown.py",
    "tests/security/test_refusal_details.py",
    "tests/security/test_signature_payload_reads.py",
    "tests/security/test_signature_only_index.py",
    "tests/security/test_config_labels.py",
    "tests/operations/test_observability.py",
)

TARGETS: dict[str, Target] = {
    "events-signing": Target(
        ("registry/events/signing.py",),
        ("tests/events/test_signing.py", "tests/security/test_event_signatures.py"),
    ),
    "events-verify": Target(
        ("registry/events/signing.py",),
        ("tests/events/test_signing.py", "tests/security/test_event_signatures.py"),
        function="verify",
        bare=True,
    ),
    "auth": Target(
        (
            "registry/auth/middleware.py",
            "registry/auth/permissions.py",
            "registry/auth/scopes.py",
            "registry/auth/service.py",
            "registry/auth/tokens.py",
            "registry/auth/users.py",
            "registry/auth/ratelimit.py",
            "registry/auth/token_endpoint.py",
            "registry/auth/token_cache.py",
            "registry/auth/sessions.py",
        ),
        (
            "tests/auth/test_permissions.py",
            "tests/auth/test_scopes.py",
            "tests/auth/test_accounts.py",
            "tests/auth/test_api.py",
            "tests/security/test_auth_decisions.py",
            "tests/security/test_auth_exemptions.py",
            "tests/security/test_token_realm.py",
            "tests/security/test_auth_caches.py",
            "tests/security/test_credential_changes.py",
            "tests/console/test_sessions.py",
        ),
        deselect=(
            "tests/security/test_auth_caches.py::"
            "test_a_removal_by_another_process_decides_the_next_request_of_every_server",
        ),
    ),
    # The bearer token's own checks (signature, claims, the verified-token cache, the credential
    # it binds) against the tests that attack them: a shorter run than all of `auth`.
    "auth-tokens": Target(
        ("registry/auth/tokens.py", "registry/auth/token_cache.py"),
        (
            "tests/auth/test_accounts.py",
            "tests/security/test_auth_caches.py",
            "tests/security/test_credential_changes.py",
            "tests/security/test_auth_decisions.py",
        ),
        deselect=(
            "tests/security/test_auth_caches.py::"
            "test_a_removal_by_another_process_decides_the_next_request_of_every_server",
        ),
    ),
    # The parts of `auth` its plain unit tests decide (scopes, the users file, login limits): a
    # mutant that survives them is run again against the HTTP tests (`--recheck`, target `auth`).
    "auth-units": Target(
        ("registry/auth/scopes.py", "registry/auth/users.py", "registry/auth/ratelimit.py"),
        (
            "tests/auth/test_scopes.py",
            "tests/auth/test_permissions.py",
            "tests/auth/test_accounts.py",
            "tests/auth/test_config.py",
            "tests/security/test_users_file_full_disk.py",
        ),
        bare=True,
    ),
    # Failed-login limiting alone, against the users-file and login tests that drive it.
    "auth-ratelimit": Target(
        ("registry/auth/ratelimit.py",),
        ("tests/auth/test_accounts.py", "tests/security/test_login_limits.py"),
        bare=True,
    ),
    # The verified-token cache alone, against the tests of its edges (plain unit tests).
    "auth-cache": Target(
        ("registry/auth/token_cache.py",),
        ("tests/security/test_token_edges.py",),
        bare=True,
    ),
    # The token authority against its plain unit tests (the HTTP tests of `auth-tokens` judge
    # what survives them: `--recheck`).
    "auth-tokens-units": Target(
        ("registry/auth/tokens.py",),
        (
            "tests/security/test_token_edges.py",
            "tests/auth/test_accounts.py",
            "tests/security/test_token_claims.py",
        ),
        bare=True,
    ),
    # The console's login sessions alone, against the console's session tests.
    "auth-sessions": Target(
        ("registry/auth/sessions.py",),
        (
            "tests/security/test_console_session_edges.py",
            "tests/console/test_sessions.py",
            "tests/security/test_robot_console_sessions.py",
            "tests/security/test_unreadable_users_file.py",
        ),
    ),
    # The token endpoint alone (who gets a token for what, the realm it names).
    "auth-endpoint": Target(
        ("registry/auth/token_endpoint.py",),
        (
            "tests/security/test_token_endpoint_requests.py",
            "tests/security/test_basic_credentials.py",
            "tests/auth/test_api.py",
            "tests/security/test_token_realm.py",
            "tests/security/test_failed_login_records.py",
        ),
    ),
    # The authentication service alone (Basic and Bearer credentials, what a token still grants).
    "auth-service": Target(
        ("registry/auth/service.py",),
        (
            "tests/security/test_basic_credentials.py",
            "tests/security/test_credential_changes.py",
            "tests/security/test_auth_decisions.py",
            "tests/auth/test_api.py",
            "tests/security/test_failed_login_records.py",
            "tests/security/test_allowed_resources.py",
            "tests/security/test_unreadable_users_file.py",
        ),
    ),
    # The request path's guard alone (who may do what on which route, the challenges, the
    # exempt paths, the realm), against the in-process HTTP tests of those decisions; the
    # start-up warning tests (a server subprocess) and the per-source login limit (its unknown
    # names pay full-cost hashes; the decision is `ratelimit.py`'s and `service.py`'s, judged by
    # their own targets) are left out.
    "auth-middleware": Target(
        ("registry/auth/middleware.py",),
        (
            "tests/security/test_auth_exemptions.py",
            "tests/security/test_auth_decisions.py",
            "tests/security/test_token_realm.py",
            "tests/auth/test_api.py",
            "tests/library/test_library_namespace_auth.py",
            "tests/auth/test_quarantine_readers.py",
        ),
        deselect=(
            "tests/security/test_token_realm.py::test_start_up_warns_when_listening_beyond_loopback",
            "tests/auth/test_api.py::test_failed_logins_are_rate_limited_per_source",
        ),
    ),
    # Who may read a quarantined image (the producers of its repository, `readable_by`),
    # against the in-process pulls of quarantined manifests and blobs.
    "auth-producers": Target(
        ("registry/auth/producers.py",),
        (
            "tests/auth/test_quarantine_readers.py",
            "tests/security/test_quarantine_reads.py",
            "tests/security/test_quarantine_reader_scope.py",
        ),
    ),
    "keyless": Target(
        (
            "policies/signatures/keyless.py",
            "policies/signatures/cosign.py",
            "policies/signatures/simple_signing.py",
            "policies/signatures/trust.py",
        ),
        (
            "tests/policies/test_signatures_cosign.py",
            "tests/security/test_keyless_identity.py",
            "tests/security/test_cosign_payloads.py",
            "tests/security/test_trust_section.py",
        ),
        bare=True,
    ),
    "bundles": Target(
        ("policies/signatures/bundles.py",),
        (
            "tests/policies/test_signatures_bundles.py",
            "tests/security/test_bundle_log_entries.py",
            "tests/security/test_bundle_message_signatures.py",
            "tests/security/test_bundle_bindings.py",
            "tests/security/test_bundle_rekor_proofs.py",
            "tests/policies/test_signatures_sigstore_js.py",
        ),
        bare=True,
    ),
    # What `sigstore_verifier.py` adds to the `sigstore` package's verifier (`intoto` 0.0.2
    # entries, closed TSA validity, proto3 defaults, trusted roots without a start), against the
    # bundle tests that reach it.
    "sigstore-verifier": Target(
        ("policies/signatures/sigstore_verifier.py",),
        (
            "tests/policies/test_signatures_sigstore_js.py",
            "tests/policies/test_signatures_bundles.py",
            "tests/security/test_bundle_bindings.py",
            "tests/security/test_bundle_message_signatures.py",
            "tests/security/test_bundle_log_entries.py",
            "tests/security/test_bundle_rekor_proofs.py",
            "tests/policies/test_sigstore_conformance.py",
            "tests/security/test_sigstore_verifier.py",
        ),
        bare=True,
    ),
    "notation": Target(
        ("policies/signatures/notation.py",),
        ("tests/policies/test_signatures_notation.py", "tests/security/test_notation_envelopes.py"),
        bare=True,
    ),
    "signature-rule": Target(
        (
            "policies/signature_rule.py",
            "policies/signatures/discovery.py",
            "policies/signatures/proofs.py",
            "policies/signatures/findings.py",
        ),
        (
            "tests/security/test_signature_requirement.py",
            "tests/security/test_signature_limits.py",
            "tests/security/test_signature_cost.py",
            "tests/security/test_stale_evidence.py",
            "tests/security/test_docker_reference.py",
            "tests/registry/test_signature_rule.py",
            "tests/registry/test_signature_quorum.py",
            "tests/registry/test_signature_bundles.py",
            "tests/security/test_signed_index_children.py",
            "tests/security/test_proofs_after_reload.py",
            "tests/security/test_trust_reload.py",
        ),
    ),
    "rules": Target(
        ("policies/rules.py", "policies/facts.py", "policies/gateway.py"),
        RULES_TESTS,
    ),
    # The gateway alone, against the tests of `rules` that reach it in-process: the rule and
    # classification unit tests never call it, and the server-subprocess tests of the access log
    # and request ids (no policy: they decide nothing of it) would run for every mutant.
    "gateway": Target(
        ("policies/gateway.py",),
        tuple(
            t
            for t in RULES_TESTS
            if t
            not in (
                "tests/policies/test_rules.py",
                "tests/security/test_image_claims.py",
                "tests/security/test_unreadable_config.py",
            )
        ),
        deselect=(
            *(
                f"tests/security/test_engine_fail_closed.py::{t}"
                for t in (
                    "test_a_rule_that_requires_nothing_is_refused",
                    "test_a_base_image_rule_that_checks_nothing_is_refused",
                    "test_a_verdict_with_no_decision_does_not_hold",
                    "test_policy_check_shows_the_default",
                )
            ),
            *(
                f"tests/security/test_image_classification.py::{t}"
                for t in ("test_classification", "test_runtime_layer_types", "test_inert_payloads")
            ),
            *(
                f"tests/operations/test_observability.py::{t}"
                for t in (
                    "test_access_log_logs_even_at_log_level_warning",
                    "test_json_logs_carry_the_request_id_the_response_names",
                    "test_a_malformed_request_id_is_replaced",
                    "test_forked_workers_hand_out_ids_of_their_own",
                )
            ),
        ),
    ),
    # The `docker_reference` check alone (which repository a signature signs for, upstream
    # names remapped), against its unit tests and the in-process pulls that decide by it.
    "references": Target(
        ("policies/signatures/references.py",),
        (
            "tests/policies/test_references.py",
            "tests/security/test_cosign_payloads.py",
            "tests/security/test_docker_reference.py",
            "tests/proxy/test_signatures.py",
        ),
    ),
    # The blob gate (quarantine by blob: may a blob be read, mounted or deleted), against the
    # in-process HTTP tests of blob reads, mounts and deletes under pull rules.
    "blob-access": Target(
        ("policies/blob_access.py",),
        (
            "tests/security/test_quarantine_reads.py",
            "tests/security/test_side_doors.py",
            "tests/security/test_blob_delete_races.py",
            "tests/security/test_refusal_details.py",
            "tests/security/test_quarantine_reader_scope.py",
            "tests/auth/test_quarantine_readers.py",
            "tests/registry/test_policy_enforcement.py",
            "tests/security/test_stale_evidence.py",
            "tests/security/test_blob_gate_edges.py",
        ),
    ),
    # The `base_image` rule, against its unit tests and the library tests that push images
    # built on library bases (in-process).
    "base-image": Target(
        ("policies/base_image_rule.py",),
        (
            "tests/library/test_base_image_rule.py",
            "tests/library/test_library_api.py",
            "tests/library/test_signed_by.py",
            "tests/security/test_library_tag_races.py",
            "tests/library/test_retrace.py",
        ),
    ),
    # Who may read a quarantined image (`quarantine.readable_by`): its unit tests and the
    # in-process HTTP tests of quarantined reads.
    "quarantine": Target(
        ("policies/quarantine.py",),
        (
            "tests/policies/test_quarantine.py",
            "tests/auth/test_quarantine_readers.py",
            "tests/security/test_quarantine_reader_scope.py",
            "tests/security/test_quarantine_reads.py",
        ),
    ),
    # The policy engine (which rules match, what they conclude together, the `default:`).
    "engine": Target(
        ("policies/engine.py",),
        (
            "tests/security/test_engine_fail_closed.py",
            "tests/policies/test_rules.py",
            "tests/policies/test_quarantine.py",
            "tests/security/test_quarantine_reads.py",
            "tests/registry/test_policy_enforcement.py",
        ),
    ),
    "vulnerabilities": Target(
        ("policies/vulnerabilities.py", "registry/scans/webhook.py"),
        (
            "tests/security/test_vulnerability_limits.py",
            "tests/security/test_vulnerability_counting.py",
            "tests/security/test_scan_webhook_decisions.py",
            "tests/scans",
        ),
    ),
    "upload-commit": Target(
        ("registry/upload_sessions.py",),
        (
            "tests/registry/test_uploads.py",
            "tests/security/test_sha512_upload_digest.py",
            "tests/storage/test_disk_full_commit.py",
        ),
        function="finish",
    ),
}

#: Run each mutant's tests in a fork of a preloaded server (tests/mutation/forkserver.py).
FORKING = True
#: Only these modules of the targets (--module), or all.
ONLY: tuple[str, ...] = ()
#: Earlier sessions whose results are kept (--resume): only their pending mutants run.
RESUME: tuple[Path, ...] = ()

#: Only the mutants of operators whose name contains one of these (--operator), or all.
OPERATORS: tuple[str, ...] = ()

#: The CI subset: small, fast, and every mutant in it must be killed.
SMOKE = ("events-verify",)

#: Operators that cannot change a security decision here, or only by crashing.
EXCLUDED_OPERATORS = [
    r"core/ReplaceBinaryOperator_.*",
    r"core/NumberReplacer",
    r"core/VariableReplacer",
    r"core/VariableInserter",
    r"core/RemoveDecorator",
    r"core/ReplaceUnaryOperator_(UAdd|USub|Invert)_.*",
    r"core/ReplaceUnaryOperator_Delete_(USub|Invert)",
    # `==` to `is`: on strings and ints an identity test is a crash-free alias or a certain
    # False; the `!=`/`==` swaps already cover the decision.
    r"core/ReplaceComparisonOperator_(Eq|NotEq|Lt|LtE|Gt|GtE)_(Is|IsNot)",
    r"core/ReplaceComparisonOperator_(Is|IsNot)_(Lt|LtE|Gt|GtE)",
]


def function_lines(module: str, function: str) -> str:
    """The line range ("start-end") of `function` in `module`."""
    import ast

    source = (ROOT / module).read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == function:
            return f"{node.lineno}-{node.end_lineno}"
    raise SystemExit(f"{module} has no function {function} any more")


def copy_tree(into: Path) -> None:
    """The files git tracks or would track (not ignored), copied without bytecode caches."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        source = ROOT / raw.decode()
        if not source.is_file():
            continue
        destination = into / raw.decode()
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)


def target_tests(target: Target) -> list[str]:
    """The target's test files that exist in this tree."""
    return [t for t in target.tests if (ROOT / t).exists()]


def test_args(target: Target) -> list[str]:
    """pytest's arguments for the target: its test files, less the deselected tests."""
    return [*target_tests(target), *(a for t in target.deselect for a in ("--deselect", t))]


def test_command(target: Target, server: str | None = None) -> str:
    """The command cosmic-ray runs for each mutant: pytest, or pytest in a fork of `server`."""
    tests = " ".join(test_args(target))
    pytest = PYTEST if server is None else f"{sys.executable} {FORK} run {server} {PYTEST_ARGS}"
    return f"{BARE} {pytest} {tests}" if target.bare else f"{pytest} {tests}"


@contextlib.contextmanager
def fork_server(work: Path, target: Target) -> Iterator[str]:
    """A fork server (tests/mutation/forkserver.py) preloaded for `target`'s tests; its socket.
    It starts by running every test on the unmutated tree, and stops if one fails (or every
    mutant would count as killed)."""
    path = str(work / f"fork-{os.getpid()}-{time.monotonic_ns()}.sock")
    server = subprocess.Popen(
        [sys.executable, FORK, "serve", path, ",".join(target.modules), *test_args(target)],
        cwd=work,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if server.stdout is None or server.stdout.readline().strip() != "ready":
            raise SystemExit("the fork server did not start")
        yield path
    finally:
        server.kill()
        server.wait()


def config_for(name: str, target: Target, module: str, server: str | None = None) -> str:
    """The cosmic-ray configuration (TOML) for one module of a target."""
    command = test_command(target, server)
    lines = [
        "[cosmic-ray]",
        f'module-path = "{module}"',
        # The fork server stops a run that hangs (after four times the unmutated run): a
        # timeout here would count a slow run on a loaded machine as a kill.
        "timeout = 86400.0",
        "excluded-modules = []",
        f'test-command = "{command}"',
        "",
        "[cosmic-ray.distributor]",
        'name = "local"',
        "",
        "[cosmic-ray.filters.operators-filter]",
        "exclude-operators = " + json.dumps(EXCLUDED_OPERATORS),
    ]
    if target.function is not None:
        span = function_lines(module, target.function)
        lines += ["", "[cosmic-ray.filters.line-filter.lines]", f'"{module}" = ["{span}"]']
    return "\n".join(lines) + "\n"


def skip_dataclass_flags(session: Path, module: Path) -> None:
    """Mark as skipped the mutants of `@dataclass(...)` lines (`frozen`, `slots` flipped): no
    input tells them apart (docs/mutation.md), and each one would run every test."""
    import sqlite3

    lines = module.read_text().splitlines()
    with contextlib.closing(sqlite3.connect(session)) as db, db:
        pending = db.execute(
            "SELECT job_id, start_pos_row FROM mutation_specs "
            "WHERE job_id NOT IN (SELECT job_id FROM work_results)"
        ).fetchall()
        db.executemany(
            "INSERT INTO work_results (worker_outcome, output, test_outcome, diff, job_id) "
            "VALUES ('SKIPPED', 'dataclass flags: equivalent', NULL, '', ?)",
            [(job,) for job, row in pending if lines[row - 1].lstrip().startswith("@dataclass(")],
        )


def skip_other_operators(session: Path, wanted: tuple[str, ...]) -> None:
    """Mark as skipped the pending mutants of every operator but `wanted` (`--operator`): a
    recheck of one kind of mutant, say the narrowed handlers of `ExceptionReplacer`."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(session)) as db, db:
        pending = db.execute(
            "SELECT job_id, operator_name FROM mutation_specs "
            "WHERE job_id NOT IN (SELECT job_id FROM work_results)"
        ).fetchall()
        db.executemany(
            "INSERT INTO work_results (worker_outcome, output, test_outcome, diff, job_id) "
            "VALUES ('SKIPPED', 'another operator (--operator)', NULL, '', ?)",
            [(job,) for job, operator in pending if not any(w in operator for w in wanted)],
        )


def carry_results(earlier: tuple[Path, ...], session: Path) -> int:
    """Copy into the fresh `session` the results of earlier (interrupted) sessions for the
    mutants they share, matched by module, operator, occurrence and position, so that `exec`
    runs only what they did not. Earlier sessions of another version of the source match
    only where the mutated text sits at the same place; a mutant that moved runs again."""
    import sqlite3

    key = (
        "m.module_path, m.operator_name, m.occurrence, m.start_pos_row, m.start_pos_col, "
        "m.end_pos_row, m.end_pos_col"
    )
    carried = 0
    with contextlib.closing(sqlite3.connect(session)) as db, db:
        pending = {
            tuple(row[1:]): row[0]
            for row in db.execute(
                f"SELECT m.job_id, {key} FROM mutation_specs m "
                "WHERE m.job_id NOT IN (SELECT job_id FROM work_results)"
            )
        }
        for path in earlier:
            with contextlib.closing(sqlite3.connect(path)) as old:
                for row in old.execute(
                    f"SELECT r.worker_outcome, r.output, r.test_outcome, r.diff, {key} "
                    "FROM work_results r JOIN mutation_specs m ON m.job_id = r.job_id "
                    "WHERE r.worker_outcome = 'NORMAL'"
                ):
                    job = pending.pop(tuple(row[4:]), None)
                    if job is None:
                        continue
                    db.execute(
                        "INSERT INTO work_results "
                        "(worker_outcome, output, test_outcome, diff, job_id) VALUES (?,?,?,?,?)",
                        (*row[:4], job),
                    )
                    carried += 1
    return carried


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)


def mutate(name: str, target: Target, work: Path, results: Path) -> tuple[int, int, list[dict]]:
    """Run one target; (killed, total, survivors)."""
    killed = total = 0
    survivors: list[dict] = []
    with fork_server(work, target) if FORKING else contextlib.nullcontext() as server:
        for module in target.modules:
            if ONLY and module not in ONLY:
                continue
            k, t, s = mutate_module(name, target, module, work, results, server)
            killed, total, survivors = killed + k, total + t, survivors + s
    return killed, total, survivors


def mutate_module(
    name: str, target: Target, module: str, work: Path, results: Path, server: str | None
) -> tuple[int, int, list[dict]]:
    """Run one module of a target; (killed, total, survivors)."""
    survivors: list[dict] = []
    stem = f"{name}--{Path(module).stem}"
    config = work / f"{stem}.toml"
    session = work / f"{stem}.sqlite"
    config.write_text(config_for(name, target, module, server))
    run([*COSMIC_RAY, "init", str(config), str(session)], work)
    run([*FILTER_OPERATORS, str(session), str(config)], work)
    if target.function is not None:
        run([*FILTER_LINES, str(session), "--config", str(config)], work)
    skip_dataclass_flags(session, work / module)
    if OPERATORS:
        skip_other_operators(session, OPERATORS)
    if RESUME:
        carried = carry_results(RESUME, session)
        print(f"  {module}: {carried} results carried over from earlier sessions", flush=True)
    started = time.monotonic()
    try:
        run([*COSMIC_RAY, "exec", str(config), str(session)], work)
    except subprocess.CalledProcessError as exc:
        # Keep what ran (the work folder is about to go): `--resume` continues from it.
        kept = keep_interrupted(session, results, stem)
        why = exc.stderr.strip()[-500:]
        raise SystemExit(f"cosmic-ray exec failed ({why}); kept {kept}") from exc
    except (KeyboardInterrupt, SystemExit):
        # Stopped by hand (Ctrl-C, or `kill` of this process: SIGTERM is raised as SystemExit
        # by `main`): keep what ran too.
        print(f"  stopped; kept {keep_interrupted(session, results, stem)}", flush=True)
        raise
    timeouts = work / "timeouts.log"
    if timeouts.exists():
        for place in timeouts.read_text().split():
            print(f"  stopped at the deadline (counted as killed; look at it): {place}")
        timeouts.unlink()
    dump = run([*COSMIC_RAY, "dump", str(session)], work).stdout
    module_killed = module_total = 0
    for line in dump.splitlines():
        item, result = json.loads(line)
        if result is None or result["worker_outcome"] != "normal":
            continue  # skipped by a filter, or the test command failed to start
        module_total += 1
        if result["test_outcome"] == "survived":
            mutation = item["mutations"][0]
            survivors.append(
                {
                    "module": mutation["module_path"],
                    "operator": mutation["operator_name"],
                    "occurrence": mutation["occurrence"],
                    "line": mutation["start_pos"][0],
                    "diff": result.get("diff", ""),
                }
            )
        else:
            module_killed += 1
    print(
        f"  {module}: {module_killed}/{module_total} killed ({time.monotonic() - started:.0f}s)",
        flush=True,
    )
    shutil.copy2(session, results / session.name)
    return module_killed, module_total, survivors


def keep_interrupted(session: Path, results: Path, stem: str) -> Path:
    """Copy the session of a run that did not finish to `results`, to `--resume` from."""
    import sqlite3

    kept = results / f"{stem}.interrupted.sqlite"
    with (
        contextlib.closing(sqlite3.connect(session)) as live,
        contextlib.closing(sqlite3.connect(kept)) as copy,
    ):
        live.backup(copy)  # consistent even if cosmic-ray was writing when it was stopped
    return kept


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, theirs, ...), read from /proc: a child that made a
    session of its own (cosmic-ray runs each test command in one) is still found."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop_children() -> None:
    """Kill every process this run started, at every depth, while they are still linked to
    it (once a parent dies its children are handed to init and can no longer be found): the
    fork server, the test run it forked for a mutant, cosmic-ray and the tests it started.
    Then the copy of the tree they worked in can be removed with nothing writing to it."""
    for _ in range(3):  # one may have forked while the others were being found
        found = descendants(os.getpid())
        if not found:
            return
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def stop_on_signal(signum: int, frame: object) -> None:
    """SIGTERM and SIGINT in every mode: the children first, then unwind (SystemExit or
    KeyboardInterrupt) so that the work tree is removed and an interrupted session kept."""
    stop_children()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def recheck(session: Path, names: list[str]) -> int:
    """Run each survivor of an earlier session again against the current tests (after writing
    the tests that should kill them); print what still survives. Each is judged by the first of
    `names` (or of every target) that mutates its module."""
    import sqlite3

    rows = (
        sqlite3.connect(session)
        .execute(
            "SELECT m.module_path, m.operator_name, m.occurrence, m.start_pos_row "
            "FROM work_results r JOIN mutation_specs m ON m.job_id = r.job_id "
            "WHERE r.test_outcome = 'SURVIVED' ORDER BY m.module_path, m.start_pos_row"
        )
        .fetchall()
    )
    still = 0
    with (
        tempfile.TemporaryDirectory(prefix="trustyard-mutation-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        copy_tree(work)
        servers: dict[str, str | None] = {}
        for module, operator, occurrence, line in rows:
            name, target = next(
                (n, TARGETS[n]) for n in names or TARGETS if module in TARGETS[n].modules
            )
            if name not in servers:
                servers[name] = stack.enter_context(fork_server(work, target)) if FORKING else None
            command = test_command(target, servers[name])
            out = run(
                [*COSMIC_RAY, "mutate-and-test", module, operator, str(occurrence), command],
                work,
            ).stdout
            outcome = json.loads(out)["test_outcome"]
            still += outcome == "survived"
            print(f"{outcome:9} {module}:{line} {operator} ({name})", flush=True)
    print(f"{len(rows) - still}/{len(rows)} earlier survivors now killed")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help="targets to run (default: all)")
    parser.add_argument("--smoke", action="store_true", help="the CI subset; fail on a survivor")
    parser.add_argument("--list", action="store_true", help="list the targets")
    parser.add_argument("--results", default=".mutation", help="where session files are kept")
    parser.add_argument("--recheck", type=Path, help="rerun this session's survivors only")
    parser.add_argument("--module", action="append", help="mutate only this module of a target")
    parser.add_argument(
        "--resume",
        type=Path,
        action="append",
        help="keep this earlier session's results; run only the mutants it did not",
    )
    parser.add_argument(
        "--operator",
        action="append",
        help="run only the mutants of operators whose name contains this (ExceptionReplacer)",
    )
    parser.add_argument(
        "--no-fork", action="store_true", help="start pytest afresh for each mutant (slow)"
    )
    args = parser.parse_args()
    global FORKING, ONLY, RESUME, OPERATORS
    FORKING, ONLY = not args.no_fork, tuple(args.module or ())
    OPERATORS = tuple(args.operator or ())
    RESUME = tuple(p.resolve() for p in args.resume or ())
    # A `kill` or Ctrl-C stops every process of the run and keeps what ran (`--resume`).
    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGINT, stop_on_signal)
    if args.recheck is not None:
        os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
        unknown = [n for n in args.targets if n not in TARGETS]
        if unknown:
            parser.error(f"unknown targets {unknown}; see --list")
        return recheck(args.recheck.resolve(), args.targets)
    if args.list:
        for name, target in TARGETS.items():
            print(f"{name}: {', '.join(target.modules)}\n    tests: {', '.join(target.tests)}")
        return 0
    names = list(SMOKE) if args.smoke else (args.targets or list(TARGETS))
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown targets {unknown}; see --list")
    results = (ROOT / args.results).resolve()
    results.mkdir(parents=True, exist_ok=True)
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"  # a same-size mutant must never hit a stale .pyc
    killed = total = 0
    survivors: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="trustyard-mutation-") as tmp:
        work = Path(tmp)
        copy_tree(work)
        for name in names:
            print(f"== {name}", flush=True)
            k, t, s = mutate(name, TARGETS[name], work, results)
            killed, total, survivors = killed + k, total + t, survivors + s
    for survivor in survivors:
        print(f"\nSURVIVED {survivor['module']}:{survivor['line']} {survivor['operator']}")
        print(survivor["diff"])
    score = 100.0 * killed / total if total else 100.0
    print(f"\nmutation score: {killed}/{total} killed ({score:.1f}%), {len(survivors)} survived")
    (results / "survivors.json").write_text(json.dumps(survivors, indent=1))
    if args.smoke and survivors:
        print("smoke subset: every mutant must be killed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
