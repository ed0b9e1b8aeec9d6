"""Cache stage (issue 12): exact and semantic answers, never wrong for the asker. Not wired yet."""
