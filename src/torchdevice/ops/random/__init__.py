"""Random number generation: torch.cuda's RNG API driven by the target's generator (generators.py)."""
