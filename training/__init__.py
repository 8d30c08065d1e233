"""Training, data, evaluation, analyses and release tooling for rrg (not served to the Hub)."""
