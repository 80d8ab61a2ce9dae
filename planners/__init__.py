"""POI-aware nnU-Net experiment planning: fingerprint extensions and the planner subclass."""
