"""Diagnostics that perf/gpu_check.sh runs, and the proofs on the embedded model: not speed
benchmarks against a peer."""
