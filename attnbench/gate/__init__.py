"""The performance-regression gate's parts: statistics (stats), the sides of a comparison
(sides), report formats (render), suite runs and baselines (runs) and same-job A/B runs (ab).
The verdicts themselves live in attnbench/compare.py; the commands in attnbench/cli_gate.py.
"""
