"""Converters from landmark tools' formats into the unified raw format, and synthetic phantoms."""
