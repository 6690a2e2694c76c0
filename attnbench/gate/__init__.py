"""The performance-regression gate's parts: statistics (stats), the sides of a comparison
(sides), report formats (render), suite runs and baselines (runs) and same-job A/B runs (ab).
The verdicts themselves live in gate/compare.py; the commands in cli/gate.py.
"""
