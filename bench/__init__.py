"""Benchmarks: ``python -m bench [NAME ...]`` runs them and prints ratios measured side by side."""
