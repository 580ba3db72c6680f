"""Rules both sides apply the same way: how long to wait before trying again (backoff) and where
a webhook may be sent (address checks against SSRF)."""
