"""The local server stack behind ``make up`` / ``make down`` (see README.md here and stack.py)."""

from infra.stack.stack import ServiceStatus, Stack, StackError

__all__ = ["ServiceStatus", "Stack", "StackError"]
