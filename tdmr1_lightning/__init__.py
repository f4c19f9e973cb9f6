"""TDM-R1 on PyTorch Lightning: reinforcement learning of few-step text-to-image diffusion models from
rewards nobody can differentiate."""

__version__ = "0.2.0"
