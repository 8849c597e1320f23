"""Attribution patching (rwkv_core.analysis.patching.attribution): AtP must equal the directional derivative of
exact patching, measured by finite differences of a scaled patch (corrupted + eps x (clean - corrupted), both
signs, Richardson-extrapolated) through the exact engine (two prompts) or through plain hooked forwards (the causal
tracing's noise), every cell within 1e-3 relative.

The comparison runs the model in float64 (`float64_model`: a copy of the model with every `.float()` of the
forward made float64): in float32 the differences carry a rounding floor of ~1e-4 of a grid's largest value,
which hides nothing about AtP but would make a per-cell 1e-3 check a check of rounding (in float64 the two agree
to ~1e-5)."""
from __future__ import annotations

import contextlib
import copy

import numpy as np
import pytest
import torch

from rwkv_core.analysis import patching as P
from rwkv_core.analysis import tracing as TR
from rwkv_core.analysis.patching.attribution import atp_grids, atp_trace
from rwkv_core.io.checkpoint import load_model
from rwkv_core.io.tokenizer import ByteTokenizer
from tests.analysis.test_tracing import _one_thread, small_model  # noqa: F401 (the autouse fixture: one thread)

BYTES = ByteTokenizer()
EPS = (1e-3, 5e-4)


@contextlib.contextmanager
def float64_model(model):
    """A float64 copy of the model, run with `Tensor.float` meaning float64 and float64 as the default dtype (the
    forward keeps its residual stream float32 by calling `.float()`): the whole engine in float64."""
    m = copy.deepcopy(model).to(torch.float64)
    orig, default = torch.Tensor.float, torch.get_default_dtype()
    torch.Tensor.float = lambda self: self.double()
    torch.set_default_dtype(torch.float64)
    try:
        yield m
    finally:
        torch.Tensor.float = orig
        torch.set_default_dtype(default)


def agree(atp: np.ndarray, fd: np.ndarray, rel: float = 1e-3) -> bool:
    """Every cell within `rel` relative (cells at ~0 within rel x 1e-6 of the grid's largest value)."""
    ok = ~np.isnan(fd)
    assert np.array_equal(ok, ~np.isnan(atp))
    scale = np.maximum(np.abs(fd[ok]), 1e-6 * np.abs(fd[ok]).max())
    return bool(np.all(np.abs(atp[ok] - fd[ok]) <= rel * scale))


def richardson(f) -> np.ndarray:
    """d/d eps of f(eps) at 0 from central differences at EPS[0] and EPS[1] = EPS[0] / 2 (error O(eps^4))."""
    d = [(f(e) - f(-e)) / (2 * e) for e in EPS]
    return (4 * d[1] - d[0]) / 3


@pytest.mark.parametrize("version", [pytest.param("4", marks=pytest.mark.slow),
                                     pytest.param("5.2", marks=pytest.mark.slow), "6", "7"])
def test_atp_is_the_derivative_of_exact_patching_two_prompts(version):
    with float64_model(small_model(version)) as model:
        check_pair_against_differences(model)


def check_pair_against_differences(model) -> None:
    pair = P.prepare_pair(model, BYTES, "ab cdef gh", "ab xyzef gh", " Zq", " Qz")
    assert pair.clean_cache["resid"].dtype == torch.float64
    atp = atp_grids(pair)
    assert atp.method == "atp"
    for s in P.SITES:
        fd = richardson(lambda e: P.patch_grids(pair, (s,), scale=e).raw[s])
        est = atp.raw[s] - pair.corrupt_value
        assert np.abs(fd).max() > 1e-2  # something to compare
        assert agree(est, fd), (s, float(np.nanmax(np.abs(est - fd))), float(np.nanmax(np.abs(fd))))


def test_atp_span_alignment_and_unaligned_tokens():
    with float64_model(small_model("6")) as model:
        pair = P.prepare_pair(model, BYTES, "x ab cde fg", "ab XY fg", " Z", " Q", align_by="spans",
                              clean_span="cde", corrupt_span="XY")
        atp = atp_grids(pair, ("resid", "state"))
        for s in ("resid", "state"):
            fd = richardson(lambda e: P.patch_grids(pair, (s,), scale=e).raw[s])
            assert agree(atp.raw[s] - pair.corrupt_value, fd)
            assert np.isnan(atp.raw[s][[0, 1, 5]]).all()


def _scaled_trace_cell(setup: TR.TraceSetup, spec: TR.TraceSpec, t: int, l: int, eps: float, base: str) -> float:
    """The corrupted rows (noise) with clean token t's value restored by a fraction eps at (t, l), one plain
    forward with hooks, the trace's metric `base` (what exact tracing computes at eps = 1)."""
    model, n, L = setup.model, setup.n, setup.model.cfg.n_layer
    seq = setup.seq[None]
    lerp = lambda x, c: torch.lerp(x, c.expand_as(x), eps)  # noqa: E731
    positions: tuple = ()
    if spec.kind == "block" and spec.mode in ("state", "both"):
        names = [f"blocks.{l}.{h}" for h in ("att.hook_shift", "att.hook_state", "ffn.hook_shift")]
        _, _, cache = model.run_with_cache(seq, names, state_positions=[t], device=None)
        hooks = [(nm, lambda x, h: lerp(x, cache[h.name][:, 0]) if h.pos == t else None) for nm in names]
        positions = (t,)
    else:
        hooks = []
    names = []
    if spec.kind == "block" and spec.mode in ("resid", "both"):
        names.append(f"blocks.{l}.hook_resid_post")
        if spec.restore_v_first and model.cfg.version == "7" and l + 1 < L:
            names.append(f"blocks.{l + 1}.att.hook_v_first")  # each layer passes its v_first on to the next
    elif spec.kind != "block":
        names += [f"blocks.{j}.{spec.kind}.hook_out" for j in TR.window_layers(l, L, spec.window)]
    _, _, clean = model.run_with_cache(seq, names, device=None)

    def put(x, h):
        x = x.clone()
        x[:, t] = lerp(x[:, t], clean[h.name][:, t])
        return x

    hooks += [(nm, put) for nm in names]
    hooks.insert(0, TR.setup._noise_hook(setup, slice(None)))
    final = {}
    hooks.append((f"blocks.{L - 1}.hook_resid_post", lambda x, h: final.__setitem__("x", x)))
    with torch.no_grad(), model.hooks(hooks):
        model(setup.corrupt_seq[None].expand(n, -1), state_positions=positions, logits="none")
    return setup.metrics_from_logits(model.unembed(final["x"][:, setup.answer_positions]), n)[0][base]


ALL_SPECS = tuple(TR.TraceSpec("block", m) for m in TR.MODES) + (TR.TraceSpec("att", window=2),
                                                                  TR.TraceSpec("ffn", window=3))


@pytest.mark.parametrize("version,answer,answer2,specs", [
    ("7", "Zq", "Q", ALL_SPECS + (TR.TraceSpec("block", "resid", restore_v_first=False),)),
    pytest.param("6", "Z", None, (TR.TraceSpec("block", "state"), TR.TraceSpec("att", window=2)),
                 marks=pytest.mark.slow),  # recovery of p(answer)
    pytest.param("5.2", "Zq", "Q", (TR.TraceSpec("block", "both"), TR.TraceSpec("ffn", window=2)),
                 marks=pytest.mark.slow)])
def test_atp_trace_is_the_derivative_of_a_scaled_restore(version, answer, answer2, specs):
    with float64_model(small_model(version)) as model:
        check_trace_against_differences(model, answer, answer2, specs)


def check_trace_against_differences(model, answer, answer2, specs) -> None:
    setup = TR.prepare_trace(model, BYTES, "ab cdef gh", "cd", answer, answer2=answer2, samples=3, seed=3)
    base = setup.recovery_base()
    assert base == ("logit_diff" if answer2 else "prob")
    results = atp_trace(setup, specs)
    T, L = setup.T, model.cfg.n_layer
    for spec, res in zip(specs, results):
        assert res.settings["method"] == "atp" and res.metric == base
        est = res.grids[base] - setup.corrupt[base]
        fd = np.zeros((T, L))
        for t in range(T):
            for l in range(L):
                fd[t, l] = richardson(lambda e: np.float64(_scaled_trace_cell(setup, spec, t, l, e, base)))
        assert np.abs(fd).max() > 1e-2 * abs(setup.clean[base] - setup.corrupt[base])  # something to compare
        assert agree(est, fd), (spec.label(), float(np.abs(est - fd).max()), float(np.abs(fd).max()))
        # recovery is the estimate normalised like the exact trace's
        den = setup.clean[base] - setup.corrupt[base]
        assert np.allclose(res.grids["recovery"], est / den)


def test_atp_correlates_with_exact_patching_on_the_demo_fact():
    """The demo model's fact (the README reports these correlations): AtP tracks exact patching."""
    model = load_model("models/demo-v6.pth")
    pair = P.prepare_pair(model, BYTES, "The Eiffel Tower is located in the city of",
                          "The Colosseum is located in the city of", " Paris", " Rome", align_by="spans",
                          clean_span="The Eiffel Tower", corrupt_span="The Colosseum")
    atp, exact = atp_grids(pair), P.patch_grids(pair)
    for s, r_min in (("resid", 0.7), ("att", 0.9), ("state", 0.9)):
        a, e = atp.grid(s), exact.grid(s)
        ok = ~np.isnan(e)
        assert np.corrcoef(a[ok], e[ok])[0, 1] > r_min, s
