"""Client side: connection parameters, known servers, the shared logic and its I/O drivers."""
