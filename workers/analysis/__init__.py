"""Analyses over many stored graphs (cross-prompt) and over dictionary weights (virtual weights).

Library code on a ``neo4j.Driver``; ``workers/analysis_tasks.py`` runs them as Celery jobs whose state and
result live on an ``(:Analysis)`` node (``workers/analysis/jobs.py``).
"""
