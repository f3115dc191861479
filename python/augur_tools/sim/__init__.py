"""Simulations: seeded synthetic traffic and planted worlds with known effects."""
