"""The Dagger SDK's error types, without importing the SDK.

Importing ``dagger`` costs about 0.7 s (its generated client), and a build that
Prefect serves from cache never talks to an engine, so the task modules import
the SDK inside the functions that build Dagger chains, not at the top. Code that
only needs to recognise an SDK error asks here: an exception of an SDK type can
only exist once the SDK was imported by whatever raised it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TypeGuard

if TYPE_CHECKING:
    import dagger


def is_error(exc: BaseException, *names: str) -> bool:
    """Whether ``exc`` is an instance of any of ``dagger.<name>``."""
    sdk: Any = sys.modules.get("dagger")
    if sdk is None:
        return False
    return isinstance(exc, tuple(getattr(sdk, name) for name in names))


def is_exec_error(exc: BaseException) -> TypeGuard[dagger.ExecError]:
    """A command that ran in the engine and failed (its output is on the error)."""
    return is_error(exc, "ExecError")
