"""marllb daemon: lbd, lbctl, policies and the shared-memory attach layer."""
