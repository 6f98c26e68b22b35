"""``job_retries`` and ``job_retry_deadline_seconds`` of the dbt profile, as dbt-bigquery means them.

dbt-bigquery runs a job again after a transient failure at most ``job_retries`` times (default 1; ``retries`` is
its older name), and not after ``job_retry_deadline_seconds`` have passed since the first try. The trigger does
the same per step, each time as a new job (the next attempt id), after a short jittered backoff like dbt's
(1 s doubling, at most 3 s). The setup task renders both fields into the run's index with the target's other
public fields, so the triggerer reads them without the profile's environment.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DBT_DEFAULT_RETRIES = 1
_BASE_S, _CAP_S = 1.0, 3.0


class JobRetrySettingError(ValueError):
    """A retry field of the profile is not a number; the message names it."""


@dataclass(frozen=True)
class JobRetry:
    retries: int = DBT_DEFAULT_RETRIES
    deadline_s: float | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> JobRetry:
        """From the index's target settings (strings, as setup recorded them); dbt's defaults when absent."""
        retries = settings.get("job_retries", settings.get("retries"))
        deadline = settings.get("job_retry_deadline_seconds")
        try:
            count = DBT_DEFAULT_RETRIES if retries in (None, "") else int(str(retries))
            seconds = None if deadline in (None, "") else float(str(deadline))
        except ValueError:
            raise JobRetrySettingError("the dbt profile's job_retries must be an integer and its "
                                       "job_retry_deadline_seconds a number of seconds; fix the target") from None
        return cls(max(count, 0), seconds if seconds and seconds > 0 else None)

    def delay(self, retry: int, elapsed_s: float) -> float | None:
        """Seconds to wait before retry number ``retry`` (1-based), or None when no retry is left."""
        if retry > self.retries:
            return None
        delay = random.uniform(_BASE_S / 2, min(_CAP_S, _BASE_S * 2 ** (retry - 1)))
        if self.deadline_s is not None and elapsed_s + delay > self.deadline_s:
            return None
        return delay
