"""Configuration: the typed schema, its value checks and the generated key reference."""
