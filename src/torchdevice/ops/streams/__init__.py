"""Streams, events and graphs: torch.cuda's execution-ordering API on the target (area module: cuda.py)."""
