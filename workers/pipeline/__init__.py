"""The corpus pipeline as plain library code: registry of models and dictionary sets, corpus validation,
jobs (state in Neo4j, cancellation flags and heartbeats in Redis), the per-prompt computation the Celery
task runs, and the reaper. The API (service/api) and the tasks (workers/tasks.py) are thin shells over it.
"""
