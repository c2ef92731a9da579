"""tunesmith: fine-tune causal LMs on your own data."""
__version__ = "0.1.0"
