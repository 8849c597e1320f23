"""Causal tracing and layer ablation for RWKV: where does a prompt's subject reach the answer, up the layers at one
token or forward in time through the recurrent state?

Method (ROME's causal tracing, Meng et al. 2022, adapted to a recurrent model; ../shared/docs/tracing-and-decay.md):

1. Clean run: the prompt plus the answer tokens, teacher-forced. The metric is the answer's log-probability summed
   over its tokens (the first answer token is predicted at the prompt's last token).
2. Corrupted run: Gaussian noise added to the subject tokens' input to block 0 (`noise_site="resid_pre"`, the hook
   `blocks.0.hook_resid_pre`, i.e. after ln0: the default, because RWKV renormalises its small-init embedding with
   ln0 at once; `noise_site="embed"` adds it to the raw embedding `hook_embed` as ROME does). The noise has standard
   deviation `noise * sigma`, where sigma is the standard deviation of *all entries* of that tensor over every row
   of the vocabulary (`emb.weight` for "embed", `ln0(emb.weight)` for "resid_pre"; `emb.weight` itself for models
   without ln0), computed once per model (`noise_sigma`). `samples` draws from `torch.Generator().manual_seed(seed)`,
   generated once, so every cell sees the same noise. Or subject replacement (STR): another subject string with the
   same number of tokens, one deterministic corrupted run.
3. For every prompt token t and layer l, the corrupted run again with something of the clean run restored at t:
   - kind "block", mode "resid": the residual stream after block l (`blocks.{l}.hook_resid_post`) at token t;
   - kind "block", mode "state": layer l's recurrent state after token t (`att.hook_shift`, `att.hook_state`,
     `ffn.hook_shift` at pos t), which reaches only later tokens;
   - kind "block", mode "both" (default): both of the above;
   - kind "att" / "ffn": the time-mix / channel-mix output (`att.hook_out` / `ffn.hook_out`) at token t in every
     layer of ROME's window around l: range(max(0, l - w // 2), min(L, l - (-w // 2))).
   RWKV-7 feeds layer 0's value v_first[t] to every layer. With `restore_v_first` (default on, v7 kind "block",
   modes "resid" and "both") v_first at token t is restored in the layers *above* l (`blocks.{l'}.att.hook_v_first`,
   l' > l), the layers that read it after the restored residual; mode "state" restores nothing at token t itself,
   and the att/ffn windows restore the module outputs only, as in ROME.
4. Metrics per cell, samples aggregated as ROME does (mean of probabilities):
   prob = mean over samples of p(answer) (the product of the answer tokens' probabilities);
   logprob = log(prob); first_prob = mean of p(first answer token); logit_diff = mean of
   logit(answer[0]) - logit(answer2[0]) at the prompt's last token (first tokens; NaN without a second answer);
   recovery = (m - m_corrupt) / (m_clean - m_corrupt) of `recovery_of` ("auto": logit_diff when a second answer is
   given, else prob).

Two implementations give the same numbers:
- the reference path (`method="reference"`): one ordinary forward pass per cell over the whole sequence, ROME style:
  batch row 0 is the clean run, rows 1..n the corrupted ones, hooks copy row 0 into the other rows;
- the fast path (`method="fast"`, default): the clean and corrupted runs are computed once and cached, only every
  block's input and the last block's output (`resid` [L+1, S, C] clean, [L+1, n, S, C] corrupted; v7 also
  v_first; the corrupted logits at the answer): `setup_bytes` bytes in all. Both runs' states are advanced token by
  token from these inputs as the grid moves along the tokens (`RunWalk`: every layer on one token per step, not
  the states after every token kept, which were [L, T, H, N, N] for the clean run), and each step also gives what a
  cell reads at its token (the clean att/ffn outputs, the corrupted residual after the time-mix); ablation reruns
  one layer on its cached input for the module outputs over the sequence (`TraceSetup.layer_values`). A restore at
  token t changes nothing before t and nothing in the layers below the restored one, so each cell starts from the
  corrupted state after token t-1 and runs only the layers that change
  (from l+1 for "resid" and "both" (plus layer l itself over tokens t+1.. from its clean state), from l for "state"
  over tokens t+1..; from the window's first layer for "att", from the layer after it for "ffn", whose first window
  layer changes only its output at t) over tokens t..end. Cells join one batch layer by layer (samples x cells
  along the batch axis, within `memory_budget` bytes); window cells with the same first layer share rows until their
  windows differ. Cells at tokens before the subject are exactly the corrupted run (nothing differs there) and are
  filled without a forward pass (`skip_unaffected`). Agreement with the reference: float32 rounding (~1e-6).

Stopping: `should_stop` (a callable returning True, or a `threading.Event`) is checked between batches; when it
fires the result comes back with `complete=False` and NaN in the cells not computed (no exception).

Layer ablation (`ablate_layers`, noising): the clean run with layer l's time-mix, channel-mix or whole-block
output replaced by zero, by its mean over a reference text, or by the corrupted run's value, or layer l's WKV state
reset at one token; the change of every metric at the answer, per layer.

Long prompts: `trace_grids(..., tokens=[...])` computes only the rows of those prompt tokens (the others NaN,
`settings["tokens"]` lists them); `propose_tokens` picks them: the subject's tokens, the token after it, a few
evenly spaced up to the last token, and the last token.

Modules: `setup` (prepare_trace, TraceSetup, subject, noise, RunWalk, setup_bytes, state_bytes), `results` (TraceSpec, TraceResult, grids), `fast`
(the fast path, trace_grids, trace), `reference` (reference_cell), `ablation` (ablate_layers), `subset`
(propose_tokens, parse_positions, format_positions, check_tokens); the
`python -m rwkv_core trace` command is in `rwkv_core.cli`. No Streamlit here.
"""

from rwkv_core.analysis.tracing.ablation import (ABLATION_REPLACEMENTS, ABLATION_TARGETS, AblationResult,
                                                 ablate_layers, reference_means)
from rwkv_core.analysis.tracing.fast import (DEFAULT_MEMORY_BUDGET, ProgressFn, _FastTracer, row_token_bytes, trace,
                                             trace_grids)
from rwkv_core.analysis.tracing.reference import reference_cell
from rwkv_core.analysis.tracing.results import KINDS, METRICS, MODES, TraceResult, TraceSpec, default_window
from rwkv_core.analysis.tracing.subset import (DEFAULT_BETWEEN, check_tokens, format_positions, parse_positions,
                                               propose_tokens)
from rwkv_core.analysis.tracing.setup import (NOISE_SITES, ReplacementLengthError, RunWalk, StopFn, TraceSetup,
                                              _aggregate, locate_subject, noise_sigma, prepare_trace, replacement_ids,
                                              setup_bytes, state_bytes, suggest_replacement, window_layers)

__all__ = ["ABLATION_REPLACEMENTS", "ABLATION_TARGETS", "AblationResult", "ablate_layers", "reference_means",
           "DEFAULT_MEMORY_BUDGET", "ProgressFn", "_FastTracer", "row_token_bytes",
           "trace", "trace_grids", "reference_cell", "default_window", "KINDS", "METRICS", "MODES", "TraceResult",
           "TraceSpec",
           "NOISE_SITES", "ReplacementLengthError", "RunWalk", "StopFn", "TraceSetup", "_aggregate",
           "locate_subject", "noise_sigma", "prepare_trace", "replacement_ids", "setup_bytes", "state_bytes",
           "suggest_replacement", "window_layers", "DEFAULT_BETWEEN", "check_tokens", "format_positions",
           "parse_positions", "propose_tokens"]
