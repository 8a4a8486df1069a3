"""Storage seams: the levels reach persistent data only through these interfaces."""
