"""The dbt side: every module that runs dbt or knows its internals.

- :mod:`~cosmos_async.dbt.capture`: run ``dbt build`` once against the recording endpoint, return a Capture.
- :mod:`~cosmos_async.dbt.endpoint`: the recording endpoint, the fake BigQuery API dbt talks to during capture.
- :mod:`~cosmos_async.dbt.attribution`: which node each request belongs to, and what was recorded for it.
- :mod:`~cosmos_async.dbt.captured`: the Capture's dataclasses (what :mod:`cosmos_async.remote` uploads).
- :mod:`~cosmos_async.dbt.run_dependencies`, :mod:`~cosmos_async.dbt.sql_relations`: nodes whose SQL came from
  relations the same run builds (compiled later, never stale), and the relations a statement reads or writes.
- :mod:`~cosmos_async.dbt.invoke`: one dbt command in a private workspace (in-process or as a subprocess).
- :mod:`~cosmos_async.dbt.executable`: dbt as an executable of its own virtualenv (``dbt_executable_path``).
- :mod:`~cosmos_async.dbt.venv`: the cached virtualenv built from ``async_py_requirements``.
- :mod:`~cosmos_async.dbt.capture_cli`: the capture run by another Python (a dbt virtualenv's).
- :mod:`~cosmos_async.dbt.shares`, :mod:`~cosmos_async.dbt.capture_workers`: one capture split between several
  dbt processes (the nodes' shares, the merge) and the helper processes that take a share.
- :mod:`~cosmos_async.dbt.partial_parse`: dbt's partial-parse state kept between runs.

Importing this package imports nothing of dbt: each module imports dbt where it runs it.
"""
