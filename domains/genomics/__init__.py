"""Genomics domain: models, data and tasks register here (imported lazily by zoo.registry)."""
