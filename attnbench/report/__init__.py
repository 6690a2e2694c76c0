"""Reports from results files: charts (matplotlib, Agg), tables (CSV, rich), Markdown and HTML.

Entry points: build.build_report (the `attnbench report` command), terminal.print_scaling (the
scaling table at the end of a sweep) and gallery.picture (`attnbench show-pattern`).
"""
