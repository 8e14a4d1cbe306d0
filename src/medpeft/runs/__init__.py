"""Runs: train / eval / predict from a run config, and the run-folder layout.

Import the submodules (``medpeft.runs.train``, ``.evaluate``, ``.predict``,
``.layout``); this package imports nothing, so ``medpeft.train`` can use the
layout's file names without a cycle.
"""
