"""tunesmith: fine-tune causal LMs on your own data."""
import logging

__version__ = "0.1.0"

# transformers imports bitsandbytes wherever it is installed, and bitsandbytes' CPU backend then
# warns on every start that the optional `kernels` package (fetched from the Hub) is missing: a
# line on every command that says nothing about the run. Its real errors still show.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
