"""What web and worker tell each other through Redis — never the truth, which is Postgres: the
answer jobs and their names, the kombu transport they travel by, change announcements and cancels
(pub/sub), a generation's text so far, the start rate behind a queue position's estimate, and the
model pool's shared state (slots, cooldowns, which server a conversation is on)."""
