"""SQLAlchemy's own third-party dialect compliance suite, unchanged."""

from sqlalchemy.testing.suite import *  # noqa: F401,F403
