"""attnbench.perf: time and memory of backends, and the reports rendered from them.

settings.py every default, defined once: time budgets per sweep, point timeouts
sweep.py    SweepSpec -> Case (Problem + pass + backend + device), skips with reasons
worker.py   one case in a fresh forkserver child: timeout, memory cap, status ok/oom/timeout/error
measure.py  in the child: accuracy (check_forward at the point's own N, M), first call + peak memory, timed repeats
timing.py   warm-up and repeats (CUDA events + L2 flush on GPU); median, IQR, bootstrap CI
machine.py  the machine's own matmul and bandwidth peaks
derived.py  FLOPs, minimum bytes, roofline fraction, log-log slopes
records.py  frozen PointResult; results.jsonl, the single source of truth
runner.py   the sweep loop: resume, progress/ETA, append + flush per point
report.py, plots.py, analysis.py   report.md / report.html / PNGs from results.jsonl only
compare.py  two runs point by point, one-sided Welch t-test on the per-process log medians (Holm-corrected)
main_job.py `attnbench run`, a small sweep through the same code
audit.py    `attnbench audit NAME`: the Triton launches a backend declares (Backend.audit_launches), compiled for
            gpu_targets.py's sm_80/sm_90/sm_100 without a GPU; registers, shared memory, spills, tensor cores
"""
