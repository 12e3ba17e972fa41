"""perf's defaults, each defined once: how long a point is timed and how long it may run.

The sweeps differ on purpose (a look, the README's main job, a record, an A/B gate, a GPU bench), so each
budget is named for the sweep that uses it; the modules that assemble those sweeps import it from here.
Dtypes come from where they are defined for every suite: `attnbench.problem.DTYPES` (every dtype a problem
may have) and `attnbench.precision.HALF_DTYPES`; causal alignments from `attnbench.reference.CAUSAL_ALIGNMENTS`.
"""

# Seconds of timed repeats per fresh process, after warm-up (MeasureOptions.time_budget_s).
TIME_BUDGET_S = 0.5               # MeasureOptions' default: a point run by hand, the GPU bench
PERF_TIME_BUDGET_S = 0.3          # `attnbench perf`: a record, three processes a point
RUN_TIME_BUDGET_S = 0.2           # `attnbench run`: the README's main job, about a minute on a 2-core CPU
QUICK_TIME_BUDGET_S = 0.1         # `attnbench perf --quick`: a look, not a record
INTERLEAVED_TIME_BUDGET_S = 0.5   # `attnbench compare --interleaved`: seconds of A/B pairs per process

# Seconds one point (one fresh worker process) may run before it is recorded as a timeout.
POINT_TIMEOUT_S = 120.0           # perf, run, compare --interleaved
LONG_POINT_TIMEOUT_S = 600.0      # sizes where one point takes minutes: the GPU bench, the memory scan, by hand
