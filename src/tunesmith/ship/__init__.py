"""Where a trained model goes next: its card, GGUF / Ollama, the Hub, and the report page of the run."""
