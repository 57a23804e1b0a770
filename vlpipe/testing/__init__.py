"""Helpers for tests and benches, never used by a recipe: the oracle world (:mod:`.oracle`)."""
