"""Device areas: redirection of CUDA specs (redirect.py) and the torch.cuda device API (cuda.py, with the
CUDA library front-ends in cuda_libs.py); target facts in cpu.py and mps.py."""
