"""Workflows: files in, files out — one module per CLI command, owning the run-folder contract.

Nothing below :mod:`lorita.runs` imports it; :mod:`lorita.cli` is its only caller in the package.
"""
