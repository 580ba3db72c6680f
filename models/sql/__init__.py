"""Postgres, as both sides use it: the engine and sessions, the queries and statements web and
worker both run (the outbox, the day's usage, an erasure's stop), and the round-trip count."""
