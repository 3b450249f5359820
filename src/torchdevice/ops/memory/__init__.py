"""Memory areas: torch.cuda memory statistics and management on the target (area "memory")."""
