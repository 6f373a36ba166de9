"""Orchestration: config, CLI, and (next) the Ray driver, readers, writers and HTTP server."""
