"""Easel's Discord layer: slash commands in, pool jobs out, replies back."""
