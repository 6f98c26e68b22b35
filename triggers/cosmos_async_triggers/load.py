"""jobs.insert with the job's data in the same request (a multipart upload), on the shared aiohttp session.

A seed's load job carries its CSV: ``POST {endpoint}/upload/bigquery/v2/projects/{p}/jobs?uploadType=multipart``
with a ``multipart/related`` body of two parts, the JSON job resource and the data. The job id is in the job
resource, so a retried upload of a job that was created answers 409 like a retried jobs.insert.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from cosmos_async_triggers import rest


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
    return await rest.request_json("POST", url, token=token, params={"uploadType": "multipart"}, retry=retry,
                                   data=body, content_type=content_type)
