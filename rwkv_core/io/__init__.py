"""Reading and writing: checkpoint formats behind one `load_model()`, tokenizers, trace files, synthetic checkpoints."""
