"""dbt's partial-parse state kept between runs of one project, so a setup or LOCAL task parses only what changed.

dbt writes ``partial_parse.msgpack`` into its target dir after every parse and, given one there, decides itself
whether it still fits (file checksums, ``--vars``, the env vars the project reads, the profile's connection fields,
the dbt version), parsing in full when it does not; so a state left by another dbt version or an older project is
harmless. The toolkit only keeps the file where the next run of the same project, profile, target and dataset
finds it: ``[cosmos] cache_dir``/partial-parse. ``[cosmos] enable_cache_partial_parse = False``
(astronomer-cosmos's name) turns it off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cosmos_async.config import ProfileConfig, cache_dir, cosmos_setting

FILE_NAME = "partial_parse.msgpack"
# dbt parses in full when the target's connection fields differ from the state's. These tell apart DAGs of one
# project that build different datasets (seed variants, one DAG per environment): each keeps its own state instead
# of making the other parse in full after every run of its own.
_TARGET_KEY_FIELDS = ("project", "database", "execution_project", "dataset", "schema", "location")


def state_file(project_dir: Path, profile_config: ProfileConfig, target: Mapping[str, Any]) -> Path | None:
    """Where the state of this project, profile and target (``target``: the resolved dbt target, of which only
    the fields locating its data count) is kept; None when the cache is turned off."""
    if str(cosmos_setting("enable_cache_partial_parse", "True")).strip().lower() != "true":
        return None
    located = {k: str(target[k]) for k in _TARGET_KEY_FIELDS if target.get(k) not in (None, "")}
    key = "\0".join([str(Path(project_dir).resolve()), profile_config.profile_name, profile_config.target_name,
                     json.dumps(located, sort_keys=True)])
    return cache_dir() / "partial-parse" / hashlib.sha256(key.encode()).hexdigest()[:16] / FILE_NAME


def restore(state: Path | None, target_dir: Path) -> None:
    """Put the kept state into a fresh target dir (nothing to do without one)."""
    if state is None or not state.is_file():
        return
    target_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # a cache that cannot be read only costs a full parse
        shutil.copyfile(state, target_dir / FILE_NAME)


def keep(target_dir: Path, state: Path | None) -> None:
    """Keep the state dbt left in ``target_dir`` for the next run; atomic, so concurrent tasks never read half."""
    written = target_dir / FILE_NAME
    if state is None or not written.is_file():
        return
    with contextlib.suppress(OSError):  # a read-only or full cache dir only costs the next run a full parse
        state.parent.mkdir(parents=True, exist_ok=True)
        partial = state.with_name(f".{FILE_NAME}.{os.getpid()}")
        shutil.copyfile(written, partial)
        partial.replace(state)
