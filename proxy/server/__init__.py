"""The asyncio side: listeners, origin connections and tunnels, thin around the sans-I/O core."""
