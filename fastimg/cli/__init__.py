"""``fastimg`` command line: thin wrappers over the library; user mistakes exit 2 with one line.

:mod:`.app` runs a command (:func:`main`); :mod:`.build`, :mod:`.describe` and :mod:`.runs`
define the commands and their flags (build a store; show or describe one; train, predict,
explain), which :mod:`.parser` puts together; :mod:`.options` holds the argument types and
:mod:`.report` the one-line errors and warnings.
"""
from fastimg.cli.app import main
from fastimg.cli.parser import build_parser, flags_of
from fastimg.cli.report import report_error

__all__ = ["build_parser", "flags_of", "main", "report_error"]
