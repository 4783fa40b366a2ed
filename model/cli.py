"""`crocodile` subcommands of crocodile.model (registered by crocodile.cli)."""


def register(subparsers) -> None:
    """Adds this area's subcommands. Handlers import heavy modules lazily."""
