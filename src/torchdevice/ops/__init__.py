"""Patch areas: one module (or package) per area, each ending with apply_patches()."""
