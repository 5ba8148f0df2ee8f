"""How the bot is watched: logs, its own metrics, release statistics."""
