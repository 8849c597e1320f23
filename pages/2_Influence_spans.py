"""Influence spans (W·K norm): how long each token's key stays in the recurrent state, per layer and head.

The token view colours earlier tokens by S[h, sel, i] and later ones by S[h, j, sel]; per-head curves of the span
against the distance from the selected token, the reach of every head (overview grid for the selected token, and
over all source tokens of the open layer), the full matrix, downloads and the formula. Page code:
`inspector_ui.scores_view` (shared with the Attention page).
"""
from __future__ import annotations

import sys
from pathlib import Path

try:
    import inspector_ui  # noqa: F401
except ImportError:  # run as `streamlit run pages/2_Influence_spans.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inspector_ui.frame import page_setup
from inspector_ui.scores_view import SPAN, render_scores_page

ctx = page_setup("Influence spans (W·K norm)", "🌊",
                 "How much of each token's key is still in a head's state after later tokens: S[h, j, i] = the norm "
                 "of token i's key after the decays (and, v7, removals) of tokens i+1..j.")
render_scores_page(ctx, SPAN)
