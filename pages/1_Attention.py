"""Attention scores (R·W·K): what each token reads from, per layer and head, for RWKV v4-v7.

The token view colours earlier tokens by A[h, sel, i] and later ones by A[h, j, sel]; a layer x head overview grid
for the selected token (click a tile to open a head), the full T x T matrix of the open head, downloads and the
formula. All page code lives in `inspector_ui.scores_view` (shared with the Influence spans page).
"""
from __future__ import annotations

import sys
from pathlib import Path

try:
    import inspector_ui  # noqa: F401
except ImportError:  # run as `streamlit run pages/1_Attention.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inspector_ui.frame import page_setup
from inspector_ui.scores_view import ATTN, render_scores_page

ctx = page_setup("Attention scores (R·W·K)", "🎯",
                 "Which earlier tokens each token reads from: the exact coefficient A[h, j, i] of v_i in head h's "
                 "WKV output at token j. Click a token to select it; click a tile of the overview to open a head.")
render_scores_page(ctx, ATTN)
