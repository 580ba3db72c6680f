"""Postgres, as both sides use it: the engine and sessions, the queries and statements web and
worker both run (the outbox, the day's usage, a user's stop of their questions), and the round-trip count."""
