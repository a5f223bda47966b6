"""The local default: GGUF models from PyPI packages served by llama.cpp."""
