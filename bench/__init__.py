"""On-demand benchmarks B1-B6 (DESIGN.md): ``make bench`` or ``python -m bench.b1_frames`` etc. Never timed tests."""
