"""The model: its config read from the tensors, hook points, the RWKV v4-v7 modules and the WKV kernels."""
