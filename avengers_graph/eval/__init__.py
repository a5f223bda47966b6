"""The evaluation harness: benchmarks, recording, replay, report."""
