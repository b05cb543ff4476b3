"""Which task failures are worth a retry: transient I/O and S3 errors only.

Retried: network/storage `OSError`s (s3fs maps S3 throttling and 5xx answers to `OSError(EBUSY/EREMOTEIO)`),
`TimeoutError`, `ConnectionError`, and raw botocore errors of throttling / 5xx / connection kind.
Not retried: a missing or forbidden file (`FileNotFoundError`, `PermissionError`: a missing upstream output is
not fixed by waiting), `ShardFailedError` (per-image failures above the threshold), config and code errors.
"""

from __future__ import annotations

from typing import Any

from prefect.client.schemas.objects import TaskRun
from prefect.states import State

_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
_THROTTLING_CODES = {
    "Throttling", "ThrottlingException", "SlowDown", "RequestLimitExceeded", "TooManyRequestsException",
    "RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable",
}


def is_transient_error(exc: BaseException) -> bool:
    """True for errors that a retry after a pause may fix (checks the exception and its causes)."""
    while exc is not None:
        if _is_transient_botocore(exc):
            return True
        if isinstance(exc, (TimeoutError, ConnectionError)):
            return True
        if isinstance(exc, OSError) and not isinstance(exc, _PERMANENT_OS_ERRORS):
            return True
        exc = exc.__cause__
    return False


def _is_transient_botocore(exc: BaseException) -> bool:
    try:
        from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError, ReadTimeoutError
    except ImportError:
        return False
    if isinstance(exc, (BotoConnectionError, ReadTimeoutError)):
        return True
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.get("Code") in _THROTTLING_CODES or status >= 500 or status == 429
    return False


def retry_transient(task: Any, task_run: TaskRun, state: State) -> bool:
    """Prefect `retry_condition_fn`: retry only transient I/O errors."""
    return isinstance(state.data, BaseException) and is_transient_error(state.data)
