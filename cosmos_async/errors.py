"""Exceptions users see. Each message names the cause and the fix."""

from __future__ import annotations


class CosmosAsyncError(Exception):
    """Base class for every error raised by cosmos-async."""


class ConfigurationError(CosmosAsyncError, ValueError):
    """The DAG's configuration cannot work; raised at parse time."""


class UnsupportedArgumentError(ConfigurationError, TypeError):
    """A Cosmos argument that cosmos-async does not implement; never silently ignored."""


class ManifestError(CosmosAsyncError):
    """manifest.json is missing, unreadable or not a dbt manifest this version understands."""


class SelectionError(ConfigurationError):
    """A select/exclude expression cannot be parsed, or selects nothing that becomes a task."""
