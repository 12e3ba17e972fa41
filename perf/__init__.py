"""attnbench.perf: time and memory of backends, and the reports rendered from them."""
