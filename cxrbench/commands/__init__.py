"""One module per CLI subcommand. Each module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``; ``cxrbench/cli.py`` lists the module names in ``COMMANDS`` and imports the one a command
line names.
"""
