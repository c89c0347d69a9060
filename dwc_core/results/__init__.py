"""Torch-free queries over finished runs: compare tables (grouping runs that differ only by seed), the published
reference rows shipped with the package, per-query browsing and run-vs-run diffs, and machine formats.

The CLI (``dwc compare``, ``dwc browse``) and the TUI's Compare and Browse screens are thin views over this package.
"""
