"""sdcli: Stable Diffusion from the command line, on Hugging Face diffusers."""

__version__ = "0.1.0"
