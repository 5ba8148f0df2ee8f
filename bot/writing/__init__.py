"""What the bot writes to explain: diagnoses, notes, answers, tickets. It explains; it never
decides."""
