"""Alembic environment of the batch database."""

from batch_service.models import Base
from shared.storage.migrations import run_env

run_env(Base.metadata)
