-- Inbound delivery and feedback reports (RFC 3464 DSNs, RFC 5965 ARF).
-- feedback_id names the report an event came from, so the same report
-- delivered twice records once per recipient (mta/feedback/record.py).
-- Events written by delivery itself leave it null and are not constrained.

alter table events add column feedback_id text;

create unique index events_feedback on events (recipient_id, event_type, feedback_id)
    where feedback_id is not null;
