"""Streamlit-side helpers shared by every page: the model registry, the shared model pool, the work gate,
the sidebar frame (model, prompt, compare mode, shareable URL state) and the token view component.

Pages call `frame.page_setup(...)` first; everything heavy goes through `rwkv_core`.

Importing this package asks torch's OpenMP (libgomp) to let idle worker threads sleep (`OMP_WAIT_POLICY=PASSIVE`)
unless the environment says otherwise. It must happen before torch loads, and every page imports this package
first. A server shares its cores with the browser, the tracing workers and other users' work; with libgomp's
default, workers spin between parallel regions, and whenever another process holds a core each region waits for a
descheduled worker: the decay page's state pass ran 5x slower beside one busy process, a forward pass up to 10x
(`python -m bench.bench_omp_wait`, README "Performance").
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
