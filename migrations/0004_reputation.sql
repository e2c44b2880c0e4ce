-- Reputation enforcement and automatic quota growth (quota/policy.py,
-- quota/reputation.py): review periods, quota steps and a log of both.

alter table accounts add column probation_until timestamptz;   -- end of the review
alter table accounts add column quota_changed_at timestamptz;  -- null: created_at
alter table accounts add column reputation_since timestamptz;  -- operator review

-- Any change of quota, rate or production access restarts the growth clock,
-- whoever makes it, unless the writer sets quota_changed_at itself.
create function accounts_quota_changed() returns trigger language plpgsql as $$
begin
    if (new.max_24_hour_send, new.max_send_rate, new.production)
            is distinct from (old.max_24_hour_send, old.max_send_rate, old.production)
        and new.quota_changed_at is not distinct from old.quota_changed_at then
        new.quota_changed_at := now();
    end if;
    return new;
end $$;
create trigger accounts_quota_changed before update on accounts
    for each row execute function accounts_quota_changed();

create table reputation_changes (
    id bigserial primary key,
    account_id text not null references accounts (id) on delete cascade,
    kind text not null check (kind in ('enforcement', 'quota')),
    actor text not null check (actor in ('policy', 'operator')),
    reason text not null,
    old_status text not null,
    new_status text not null,
    old_max_24_hour_send double precision not null,
    new_max_24_hour_send double precision not null,
    old_max_send_rate double precision not null,
    new_max_send_rate double precision not null,
    bounce_rate double precision,            -- null: below the minimum volume
    complaint_rate double precision,
    recipients bigint not null,              -- the representative volume judged
    created_at timestamptz not null default now()
);
create index reputation_changes_account on reputation_changes (account_id, created_at);

-- Bounces and complaints of every account over the last 14 days, without
-- reading the far more numerous send and delivery events.
create index events_feedback_created on events (created_at)
    where event_type in ('bounce', 'complaint');
