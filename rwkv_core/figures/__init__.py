"""Plotly figure builders, one module per view: pure functions, data in, figure out."""
