"""ablate against the tools a researcher would otherwise use: one benchmark per module, run as
``python -m perf.NAME`` from the repository root; figures in perf/RESULTS.md."""
