"""Small shared helpers (optional-dependency checks, logging)."""
