"""The live runtime: asyncio and websockets around the sans-I/O engine core."""
