"""Persistence: where the grid's changes go after an entity has made them.

Knows neither actors/ nor api/: it takes events (plain data) and stores them.
"""
