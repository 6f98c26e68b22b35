"""BigQuery's error reasons, as its error-messages documentation lists them, and which ones a retry can cure.

BigQuery reports a failure either as an HTTP error (``error.errors[0].reason``) or as a finished job whose
``status.errorResult.reason`` says why. The same table judges both: :mod:`cosmos_async_triggers.rest` retries
HTTP requests by it, and the node trigger decides by it whether a failed job is run again (``job_retries``).
"""

from __future__ import annotations

# The service was briefly unable to answer or run the job: the same request, or a new job, may succeed.
TRANSIENT_REASONS = frozenset({"backendError", "internalError", "rateLimitExceeded", "jobRateLimitExceeded"})
# Retrying cannot help: the SQL, the permissions, the object, a daily quota or the byte limit is the cause.
PERMANENT_REASONS = frozenset({"invalidQuery", "invalid", "accessDenied", "notFound", "quotaExceeded",
                               "bytesBilledLimitExceeded", "responseTooLarge", "duplicate", "stopped",
                               "billingNotEnabled", "resourcesExceeded"})
# Statuses retried whatever their reason says, unless the reason is a permanent one.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


def http_retryable(status: int | None, reason: str) -> bool:
    """Whether an HTTP answer (``status`` None: no answer at all) is worth sending the request again."""
    if reason in PERMANENT_REASONS:
        return False
    return status is None or status in RETRY_STATUSES or reason in TRANSIENT_REASONS


def job_retryable(reason: str | None) -> bool:
    """Whether a job that finished with this ``errorResult`` reason may succeed as a new job."""
    return reason in TRANSIENT_REASONS


def explain(reason: str | None, message: str) -> str:
    """BigQuery's ``message``, with what it means for this run where the reason alone does not say it."""
    if reason == "quotaExceeded":
        return (f"BigQuery quota exceeded (not retried: a quota resets on BigQuery's schedule, or is raised in the "
                f"Google Cloud console under IAM & Admin > Quotas): {message}")
    if reason == "bytesBilledLimitExceeded":
        return (f"{message} (not retried: the job would bill more than maximumBytesBilled, which comes from the "
                "dbt profile's maximum_bytes_billed)")
    return message
