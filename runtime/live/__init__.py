"""The live runtime: asyncio and websockets around the sans-I/O engine core."""

#: The decision log's durability modes (`--fsync`; docs/audit.md). Here, in a module that
#: imports nothing, so the command line can offer them without loading the log's code.
FSYNC_MODES = ("always", "batch", "never")
DEFAULT_FSYNC = "batch"
