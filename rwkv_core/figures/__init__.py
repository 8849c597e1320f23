"""Plotly figure builders, one module per view and `common` for what they share: pure functions, data in, figure out."""
