"""Device areas: redirection of CUDA specs (redirect.py) and the torch.cuda device API (cuda.py)."""
