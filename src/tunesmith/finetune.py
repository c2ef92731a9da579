"""`python -m tunesmith.finetune CONFIG [KEY=VALUE ...]`: the two-step workflow's second step."""
import sys

from tunesmith.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
