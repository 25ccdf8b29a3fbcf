"""The exception name cosmic-ray's `ExceptionReplacer` writes into a mutated `except` clause.

The operator narrows a handler by replacing one listed type with `CosmicRayTestingException`,
a class of cosmic-ray's that the mutated source never imports. Left undefined, the clause raises
`NameError` as soon as an exception reaches it, and the mutant is killed whatever that exception
was. Defined as a builtin (here, in the test process), the clause is evaluated as cosmic-ray
means it: a handler that no longer catches the replaced type, and nothing else changed.

Loaded as a pytest plugin (`-p tests.mutation.exception_name`) by `run.py` when each mutant
starts its own pytest; the fork server defines the name itself, once, before any fork.
"""

from __future__ import annotations

import builtins

from cosmic_ray.exceptions import CosmicRayTestingException


def define() -> None:
    """Make `CosmicRayTestingException` resolvable from every module, as a builtin."""
    builtins.CosmicRayTestingException = CosmicRayTestingException  # type: ignore[attr-defined]


define()
