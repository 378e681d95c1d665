"""The subcommands of ``sane``, one module per stage, each with ``register(subparsers)``.

These modules import only the standard library at module level (torch and the stage packages
are imported inside the handlers), so that ``sane --help`` answers at once.
"""
