"""`python -m tunesmith.dataprep CONFIG [KEY=VALUE ...]`: the two-step workflow's first step."""
import sys

from tunesmith.cli import main

if __name__ == "__main__":
    sys.exit(main(["prep", *sys.argv[1:]]))
