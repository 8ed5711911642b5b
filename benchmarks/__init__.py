"""fastimg benchmarks: each suite runs fastimg and its naive baseline in one process.

Run ``python -m benchmarks SUITE [--quick] [--json PATH]``; see ``benchmarks/RESULTS.md``.
"""
