"""warren's transactional outbox, Django side: see publish_in_transaction."""

from .publish import publish_in_transaction

__all__ = ["publish_in_transaction"]
