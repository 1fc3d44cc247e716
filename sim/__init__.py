"""marllb simulator: traces, cluster model, training and evaluation."""
