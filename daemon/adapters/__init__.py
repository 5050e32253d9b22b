"""Production adapters, one per external system, each behind a Protocol in contracts/."""
