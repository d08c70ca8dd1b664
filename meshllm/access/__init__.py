"""Who may use the mesh: API keys (owner-signed, gossiped) and their rate limits."""
