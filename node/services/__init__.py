"""Use cases: intake, scheduling, processing, export, audit, model registry, the worker."""
