"""hxd: keeps Ollama GPU inference nodes correct and observable."""

__version__ = "0.1.0"
