"""`python -m tunesmith.finetune CONFIG [KEY=VALUE ...]`: the two-step workflow's second step."""
import sys

from tunesmith.cli import run

if __name__ == "__main__":
    run(["train", *sys.argv[1:]])
