"""Seeing a run: timer regions and the end-of-run report, progress, rank-aware logs, job info.

Nothing in this layer imports MPI; functions that communicate take a context.
"""
