"""attnbench.perf: time and memory of backends, and the reports rendered from them. A pipeline, in stage order:

1. spec.py      what to measure: SweepSpec (the grid) -> Case per point, MeasureOptions (how hard), and every named
                sweep as a Profile (perf, --quick, --decode, run, compare --interleaved, memory scan, GPU bench);
                every default is defined there once
   commands.py  the command line (`attnbench perf | run | report | compare`) into a profile, run, finish
2. runner.py    the sweep loop: expands the spec once, resumes, locks the run directory, saves spec.json,
                appends each record as it completes, progress and ETA
   executors.py who measures the points: serial, a local pool (--workers), a Ray cluster (--executor ray)
   worker.py    one case in fresh forkserver children: timeout, memory cap, threads, pinning, allocator;
                status ok/oom/timeout/error
3. measure.py   in the child: accuracy (attnbench.evaluate at the point's own N, M), first call and peak memory,
                warm-up, timed repeats (CUDA events + L2 flush on GPU); the interleaved A/B pair's timing
   noise.py     the point from its processes (median of process medians, between-process interval) and its noise
                verdict with the evidence
   integrity.py the timed calls are the checked calls (rotated inputs, verified outputs, output storage watched)
   machine.py   who measured, and the machine's own matmul and bandwidth peaks
4. records.py   frozen PointResult with its derived figures (FLOPs, bytes, roofline); results.jsonl, the single
                source of truth
5. analysis.py  rows from records: fastest trusted backend per size and its evidence, failures, slopes, noisy points
   compare.py   two runs point by point, or two backends interleaved: ratios and verdicts
   stats.py     every statistic: median and intervals, Welch's and the ratio t-test, Holm's correction
6. report.py    every table rendered (terminal, markdown, HTML), report.md / report.html, the terminal summary
   plots.py     the PNGs

Beside the pipeline: tools.py (`python -m attnbench.perf.tools memory-scan | gpu-bench | crosscheck |
reference`), audit.py (`attnbench audit NAME`: the Triton launches a backend declares, compiled for
gpu_targets.py's sm_80/sm_90/sm_100 without a GPU; registers, shared memory, spills, tensor cores).
"""
