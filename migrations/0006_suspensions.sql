-- Operator suspensions of delivery (sesame queue suspend|resume, mta/queue.py).
-- While a row is in force the scheduler claims no recipient of that
-- destination domain or account; accepting mail goes on, recipients keep their
-- state, and claims already made finish. The give-up age still applies.

create table delivery_suspensions (
    kind text not null check (kind in ('domain', 'account')),
    value text not null,                     -- lower-case A-label, or an account id
    reason text,
    created_at timestamptz not null default now(),
    until timestamptz,                       -- null: until resumed
    -- The scheduler probes (kind, value) once per candidate row.
    primary key (kind, value)
);
