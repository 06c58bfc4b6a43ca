"""Alembic environment of the member database."""

from member_service.models import Base
from shared.migrations import run_env

run_env(Base.metadata)
