"""``python -m fastimg``: the ``fastimg`` command."""
from fastimg.cli.app import run

if __name__ == "__main__":
    run()
