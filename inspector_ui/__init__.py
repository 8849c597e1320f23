"""Streamlit-side helpers shared by every page: the model registry, the shared model pool, the work gate,
the sidebar frame (model, prompt, compare mode, shareable URL state) and the token view component.

Pages call `frame.page_setup(...)` first; everything heavy goes through `rwkv_core`.

Importing this package asks torch's OpenMP (libgomp) to let idle worker threads sleep (`OMP_WAIT_POLICY=PASSIVE`)
unless the environment says otherwise. It must happen before torch loads, and every page imports this package
first. A server shares its cores with the browser, the tracing workers and other users' work; with libgomp's
default, workers spin between parallel regions, and whenever another process holds a core each region waits for a
descheduled worker: beside one busy process a forward pass ran 2.3x slower than alone, and with a changing load the
same forward took 3 to 46 s. PASSIVE costs up to 2x on an idle machine and is the fastest beside other work
(`python -m bench.bench_omp_wait`, README "Performance").
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
