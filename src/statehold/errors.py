"""The one error tree of Statehold.

Every layer raises these; adapters translate them once (gRPC codes in
``statehold.grpcerrors``, exit codes in the CLI, conditions in the operator)::

    StateholdError
    ├── NotFound              the named pool, volume, snapshot or backup does not exist
    ├── AlreadyExists         the name is taken by an object with a different spec
    ├── InvalidArgument       the request itself is wrong (name, size, fs type, path)
    ├── OutOfRange            a size outside what the object can take (shrink, capacity range)
    ├── OutOfCapacity         no room: the pool (or its over-provisioning limit) is full
    ├── FailedPrecondition    the object is in the wrong state (mounted, attached, in use)
    │   └── Fenced            a replica copy's epoch is older than the cluster's: not writable
    ├── Aborted               another operation holds the object; retry later
    ├── Unavailable           a dependency is unreachable (S3, a share, a peer agent)
    ├── Corrupt               stored data failed a check (hash, MAC, format)
    ├── PermissionDenied      a wrong password or key
    ├── Temporary(retry_after) a transient fault worth retrying after ``retry_after`` s
    └── CommandError          a Linux tool failed (argv, exit code, stderr)

Lower-layer exceptions (sqlite3, subprocess, botocore, OSError) never leak past the module
that called them: they are wrapped here with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Sequence


class StateholdError(Exception):
    """Base of every error Statehold raises on purpose."""


class NotFound(StateholdError):
    pass


class AlreadyExists(StateholdError):
    pass


class InvalidArgument(StateholdError):
    pass


class OutOfRange(StateholdError):
    pass


class OutOfCapacity(StateholdError):
    pass


class FailedPrecondition(StateholdError):
    pass


class Fenced(FailedPrecondition):
    """An epoch older than what the copy (or the cluster) knows: the caller is not, or no
    longer, the primary of a replicated volume. Mapped like FailedPrecondition."""


class Aborted(StateholdError):
    pass


class Unavailable(StateholdError):
    pass


class Corrupt(StateholdError):
    pass


class PermissionDenied(StateholdError):
    pass


class Temporary(StateholdError):
    """A transient fault; the caller may retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CommandError(StateholdError):
    """A Linux tool exited non-zero (or timed out): keeps argv, exit code and stderr."""

    def __init__(self, argv: Sequence[str], code: int, stderr: str) -> None:
        self.argv = list(argv)
        self.code = code
        self.stderr = stderr.strip()
        super().__init__(f"{argv[0] if argv else '?'} exited {code}: {self.stderr[-500:]}")
