-- Configuration sets, event destinations, email templates, and the outbox of
-- webhook deliveries that events fan out to.

create table configuration_sets (
    account_id text not null references accounts (id) on delete cascade,
    name text not null,
    sending_enabled boolean not null default true,
    tls_policy text not null default 'optional' check (tls_policy in ('require', 'optional')),
    max_delivery_seconds int check (max_delivery_seconds between 300 and 50400),
    sending_pool_name text,
    reputation_metrics_enabled boolean not null default false,
    suppressed_reasons text[],               -- null: the account's list applies
    tracking_options jsonb,
    tags jsonb not null default '[]',
    created_at timestamptz not null default now(),
    primary key (account_id, name)
);

-- An event destination belongs to a configuration set, or to the whole account
-- when configuration_set is null (identity notifications, account webhooks).
create table event_destinations (
    id bigserial primary key,
    account_id text not null references accounts (id) on delete cascade,
    configuration_set text,
    name text not null,
    enabled boolean not null default true,
    -- events.event_type values: send, reject, delivery, bounce, complaint,
    -- delivery_delay, rendering_failure
    matching_event_types text[] not null,
    url text not null,
    envelope text not null default 'none' check (envelope in ('none', 'sns')),
    signing_secret_sealed bytea,            -- HMAC-SHA256 key, AES-GCM sealed
    created_at timestamptz not null default now(),
    foreign key (account_id, configuration_set)
        references configuration_sets (account_id, name) on delete cascade
);
create unique index event_destinations_name
    on event_destinations (account_id, coalesce(configuration_set, ''), name);

create table email_templates (
    account_id text not null references accounts (id) on delete cascade,
    name text not null,
    subject text,
    text_part text,
    html_part text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (account_id, name)
);

-- The transactional outbox: a row per (event, matching destination), written
-- by the trigger below in the same transaction as the event itself.
create table webhook_deliveries (
    id bigserial primary key,
    event_id bigint not null,
    destination_id bigint not null references event_destinations (id) on delete cascade,
    state text not null default 'pending' check (state in ('pending', 'delivered', 'failed')),
    attempts int not null default 0,
    next_attempt_at timestamptz not null default now(),
    lease_until timestamptz,
    last_status int,
    last_error text,
    created_at timestamptz not null default now(),
    unique (event_id, destination_id)
);
create index webhook_deliveries_due on webhook_deliveries (next_attempt_at)
    where state = 'pending';

create function fan_out_event() returns trigger language plpgsql as $$
begin
    -- The common case, an account without destinations, costs one index probe.
    if not exists (
        select 1 from event_destinations
        where account_id = new.account_id and enabled
    ) then
        return null;
    end if;
    insert into webhook_deliveries (event_id, destination_id)
    select new.id, d.id
    from event_destinations d
    left join messages m on m.id = new.message_id
    where d.account_id = new.account_id
      and d.enabled
      and new.event_type = any (d.matching_event_types)
      and (d.configuration_set is null or d.configuration_set = m.configuration_set)
    on conflict do nothing;
    return null;
end $$;

create trigger events_fan_out after insert on events
    for each row execute function fan_out_event();
