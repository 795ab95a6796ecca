"""Speed micro-benchmarks: step time, per-example norms, compile time."""
