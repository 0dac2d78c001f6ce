"""Local text-embedding engine, model store and inference sidecar (no Django)."""
