"""What the views compute: attention scores and spans, time decay, causal tracing and ablation."""
