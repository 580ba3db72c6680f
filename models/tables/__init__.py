"""The tables (SQLAlchemy 2 typed models) and the statuses a message moves through. Alembic's
migrations (migrations/) create them; a fast-tier test checks the two agree."""
