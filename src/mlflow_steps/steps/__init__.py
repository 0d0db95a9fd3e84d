"""Step definitions that run as more than one container (the in-cluster builder plan)."""
