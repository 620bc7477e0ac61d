"""A tiny product catalog: pricing rules, JSON export, sqlite storage and file cache."""
