"""VisionBoard engine. Imports nothing heavy: the dashboard imports engine.config and engine.store."""
