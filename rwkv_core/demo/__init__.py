"""The project's demo models: the generated corpus, training, evaluation and model cards."""
