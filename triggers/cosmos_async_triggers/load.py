"""jobs.insert with the job's data in the same request (a multipart upload), on the shared aiohttp session.

A seed's load job carries its CSV: ``POST {endpoint}/upload/bigquery/v2/projects/{p}/jobs?uploadType=multipart``
with a ``multipart/related`` body of two parts, the JSON job resource and the data. The job id is in the job
resource, so a retried upload of a job that was created answers 409 like a retried jobs.insert.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp

from cosmos_async_triggers import rest

# Seeds are small (google-cloud-bigquery itself uploads files under 5 MiB with multipart). The whole body is built
# in the triggerer's memory, shared by every trigger: the capture leaves larger seeds to LOCAL dbt, and the trigger
# refuses them before submitting anything.


def upload_url(bigquery_endpoint: str, project: str) -> str:
    return f"{bigquery_endpoint}/upload/bigquery/v2/projects/{project}/jobs"


def multipart_body(job: dict[str, Any], data: bytes) -> tuple[bytes, str]:
    """(body, content type) of a ``multipart/related`` upload: the job resource, then the data."""
    boundary = f"cosmos_async_{uuid.uuid4().hex}"
    while boundary.encode() in data:  # a boundary must not occur in a part
        boundary = f"cosmos_async_{uuid.uuid4().hex}"
    delimiter = f"--{boundary}\r\n".encode()
    body = b"".join([
        delimiter, b"Content-Type: application/json; charset=UTF-8\r\n\r\n", json.dumps(job).encode(), b"\r\n",
        # BigQuery reads the format from the load configuration; the media type only has to be acceptable.
        delimiter, b"Content-Type: application/octet-stream\r\n\r\n", data, b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ])
    return body, f'multipart/related; boundary="{boundary}"'


async def insert_with_data(url: str, job: dict[str, Any], data: bytes, *, token: str | None,
                           retry: rest.RetryPolicy = rest.DEFAULT_RETRY) -> dict[str, Any]:
    """Insert ``job`` with ``data`` uploaded; retry transient failures as :func:`rest.request` does.

    Raises :class:`rest.BigQueryApiError` (``.status`` 409 when the job id exists already).
    """
    body, content_type = multipart_body(job, data)
    headers = {"Content-Type": content_type, **({"Authorization": f"Bearer {token}"} if token else {})}
    session = rest.get_session()
    slept = 0.0
    last: rest.BigQueryApiError | None = None
    for attempt in range(retry.attempts):
        retry_after = 0.0
        try:
            async with session.post(url, params={"uploadType": "multipart"}, data=body, headers=headers) as resp:
                payload = await resp.read()
                if resp.status < 300:
                    return json.loads(payload)
                last = rest._api_error(resp.status, payload, "POST", url)
                if resp.status not in rest.RETRY_STATUSES:
                    raise last
                retry_after = rest._retry_after(resp.headers.get("Retry-After")) or 0.0
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError) as exc:
            last = rest.BigQueryApiError(None, type(exc).__name__, str(exc) or "connection failed", method="POST",
                                         url=url)
        delay = max(retry.delay(attempt), retry_after)
        if attempt + 1 == retry.attempts or slept + delay > retry.max_total_sleep_s:
            break
        slept += delay
        await asyncio.sleep(delay)
    assert last is not None
    raise rest.BigQueryApiError(last.status, last.reason, f"{last.message} (gave up after {attempt + 1} attempts, "
                                f"{slept:.1f}s of backoff)", method="POST", url=url)
