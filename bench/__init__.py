"""On-demand benchmarks B1-B6 (docs/bench.md; targets from docs/design.md): ``make bench`` or
``python -m bench.b1_frames`` etc. Never timed tests."""
