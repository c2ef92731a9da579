"""`python -m tunesmith.dataprep CONFIG [KEY=VALUE ...]`: the two-step workflow's first step."""
import sys

from tunesmith.cli import run

if __name__ == "__main__":
    run(["prep", *sys.argv[1:]])
