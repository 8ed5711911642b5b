"""``python -m fastimg.cli``: the ``fastimg`` command."""
import sys

from fastimg.cli.app import main

sys.exit(main())
