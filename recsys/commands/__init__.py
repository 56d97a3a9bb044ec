"""One module per ``recsys`` subcommand; each exposes ``register(subparsers)``."""
