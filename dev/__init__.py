"""Developer tooling: the embedded demo (``python -m dev.demo``), example DAGs and scripts."""
