"""Patching between two prompts for RWKV: which (token, layer) of a clean prompt carries a fact into a
corrupted one, exactly and by attribution patching, and moving the recurrent state from one prompt into another.

A clean prompt and a corrupted one that differs in the fact ("The Eiffel Tower is located in the city of" / "The
Colosseum is located in the city of"), the clean answer and the counter answer (" Paris" / " Rome"). The metric
is the logit difference LD = logit(answer) - logit(counter) at the last token, normalised
(LD - LD_corrupt) / (LD_clean - LD_corrupt): 0 = the corrupted run, 1 = the clean run (Zhang & Nanda 2024:
symmetric token replacement and logit difference). Patching is denoising: the corrupted prompt is run with one
value of the clean run written in.

Sites, per (clean token t, layer l), written at the corrupted token p aligned with t (`alignment`: from the end,
or by a span marked in each prompt):
- "resid": the residual stream after block l (`blocks.{l}.hook_resid_post`);
- "att" / "ffn": the time-mix / channel-mix output of block l (`blocks.{l}.att.hook_out` / `ffn.hook_out`);
- "state": layer l's recurrent state after the token (`att.hook_shift`, `att.hook_state`, `ffn.hook_shift` at
  pos p), which reaches only later tokens.
RWKV-7's v_first (layer 0's value, read by every layer) is not patched with the residual.

Exact patching (`exact`): one patched run per cell with prefix reuse. Attribution patching (`attribution`,
AtP): LD_corrupt + grad(LD at the corrupted run) . (clean value - corrupted value) for every cell, from one
forward pass on each prompt and one backward pass (plus, for the state, one pass of each layer with its state
perturbed after every token); also for the causal tracing page's noise corruption (`atp_trace`). State
transplant and steering (`transplant`): prompt B run from the state prompt A left, and alpha x (state_A -
state_B) added at a token of a third prompt.

Modules: `alignment`, `pair` (prepare_pair, PatchPair), `results` (PatchResult), `exact` (patch_grids,
reference_cell), `attribution` (atp_grids, atp_trace), `transplant` (transplant, steer, StateEditResult). No Streamlit here.
"""
from rwkv_core.analysis.patching.alignment import ALIGNMENTS, Alignment, align
from rwkv_core.analysis.patching.exact import patch_grids, reference_cell
from rwkv_core.analysis.patching.pair import SITES, PatchPair, check_sites, prepare_pair
from rwkv_core.analysis.patching.results import METHODS, PatchResult
from rwkv_core.analysis.patching.transplant import StateEditResult, steer, transplant

__all__ = ["ALIGNMENTS", "Alignment", "align", "patch_grids", "reference_cell", "SITES", "PatchPair", "check_sites",
           "prepare_pair", "METHODS", "PatchResult", "StateEditResult", "steer", "transplant"]
