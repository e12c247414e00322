"""Slash commands, one cog per command family (the layout of discord.py's app_commands examples)."""
