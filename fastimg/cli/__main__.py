"""``python -m fastimg.cli``: the ``fastimg`` command."""
import sys

from fastimg.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
