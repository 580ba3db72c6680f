"""Names both sides of the queue agree on. web sends by name; only worker/ defines the tasks."""

ANSWER_MESSAGE = "chatq.answer_message"
SWEEP = "chatq.sweep"
PING = "chatq.ping"
REQUEST_ID_HEADER = "chatq_request_id"
DELIVER_WEBHOOK = "chatq.deliver_webhook"
WEBHOOK_QUEUE = "webhooks"  # its own workers: a slow receiver never holds up a reply
# beat's rounds (the sweep, retention) and erasures: the default workers take from it turn about
# with the answer jobs, so none of these waits behind a backlog of those.
HOUSEKEEPING_QUEUE = "housekeeping"
ERASE_USER = "chatq.erase_user"  # DELETE /me, carried out in the background
FORGET = "chatq.forget"  # retention, and erasures no worker is carrying out
