"""The web console: a portal-style administration UI for the managed server."""

from .celery import app as celery_app

__all__ = ("celery_app",)
