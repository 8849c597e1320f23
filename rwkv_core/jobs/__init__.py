"""Heavy jobs (causal tracing, layer ablation) run in Ray worker processes, not in the process that asked for them.

A worker owns its model copies and the cached runs of its last trace; a worker that dies (the kernel's or Ray's
out-of-memory killer, a crash) fails one job with a one-line message and is restarted, while the caller (the
Streamlit server, the command line) keeps going. Modules: `specs` (what a job asks for and what it returns),
`worker` (the job functions and the Ray actor around them), `manager` (Ray started or joined, the workers, a fair
queue between users with a per-user limit, batches of independent jobs spread over every worker, progress, Stop),
`cost` (a job's time and peak memory before it starts). No Streamlit here.
"""
