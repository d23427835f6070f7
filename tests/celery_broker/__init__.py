"""Celery on squeal's kombu transport: a real Celery app and worker processes."""
