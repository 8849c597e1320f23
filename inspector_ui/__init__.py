"""Streamlit-side helpers shared by every page: the model registry, the shared model pool, the work gate,
the sidebar frame (model, prompt, compare mode, shareable URL state) and the token view component.

Pages call `frame.page_setup(...)` first; everything heavy goes through `rwkv_core`.
"""
