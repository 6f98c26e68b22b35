"""The dbt project as a typed node graph: loading (manifest or dbt ls) and selection. No dbt import here."""
