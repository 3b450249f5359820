"""Core machinery: configuration, logging, backend detection, the patch registry."""
