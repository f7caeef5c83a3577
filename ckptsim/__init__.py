"""ckptsim: replay prompt traces against llama-server context-checkpoint policies."""
__version__ = "0.1.0"
