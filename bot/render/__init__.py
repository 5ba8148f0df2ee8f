"""Every sentence and Block Kit message the bot says, for Slack and the console alike."""
