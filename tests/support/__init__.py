"""Shared test support: emulators, Airflow processes, fault-injecting proxies."""
