-- Accounts, credentials, identities, messages, recipients and their events.
-- Status values are lowercase text with CHECK constraints; SES spellings are
-- produced at the API edge.

create table accounts (
    id text primary key,
    name text not null,
    production boolean not null default false,
    sending_enabled boolean not null default true,      -- the account's own switch
    paused_by_operator boolean not null default false,
    enforcement_status text not null default 'healthy'
        check (enforcement_status in ('healthy', 'probation', 'shutdown')),
    max_24_hour_send double precision not null,
    max_send_rate double precision not null,
    quota_override boolean not null default false,      -- set by an operator
    suppressed_reasons text[] not null default '{BOUNCE,COMPLAINT}',
    details jsonb,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create table credentials (
    access_key_id text primary key,
    account_id text not null references accounts (id) on delete cascade,
    secret_sealed bytea not null,            -- AES-GCM under the settings key
    smtp_password_sha256 bytea not null,     -- the derived SMTP password, hashed
    created_at timestamptz not null default now()
);
create index credentials_account on credentials (account_id);

create table identities (
    id bigserial primary key,
    account_id text not null references accounts (id) on delete cascade,
    name text not null,                      -- lower-case domain (A-label) or address
    kind text not null check (kind in ('email_address', 'domain')),
    verification_status text not null default 'pending'
        check (verification_status in ('pending', 'success', 'failed', 'temporary_failure')),
    verification_token text,                 -- domains: the _amazonses TXT value
    verified_at timestamptz,
    last_checked_at timestamptz,
    dkim_enabled boolean not null default false,
    dkim_status text not null default 'not_started'
        check (dkim_status in ('not_started', 'pending', 'success', 'failed', 'temporary_failure')),
    dkim_origin text not null default 'aws_ses' check (dkim_origin in ('aws_ses', 'external')),
    mail_from_domain text,
    created_at timestamptz not null default now(),
    unique (account_id, name)
);

create table dkim_keys (
    id bigserial primary key,
    identity_id bigint not null references identities (id) on delete cascade,
    selector text not null,
    algorithm text not null check (algorithm in ('rsa-sha256', 'ed25519-sha256')),
    private_key_sealed bytea not null,       -- PEM, AES-GCM under the settings key
    public_key text not null,                -- base64 for the p= tag
    active boolean not null default true,
    created_at timestamptz not null default now(),
    unique (identity_id, selector)
);

create table verification_tokens (
    token_sha256 bytea primary key,
    identity_id bigint not null references identities (id) on delete cascade,
    expires_at timestamptz not null,
    used_at timestamptz
);

create table messages (
    id text primary key,                     -- SES MessageId
    account_id text not null references accounts (id) on delete cascade,
    source text not null,                    -- Source / MAIL FROM as given
    from_domain text,                        -- domain of the From header, for DKIM
    subject text,
    raw bytea not null,                      -- the MIME message as it will be sent
    recipient_count int not null,
    interface text not null check (interface in ('api', 'smtp', 'system')),
    configuration_set text,
    tags jsonb,
    created_at timestamptz not null default now()
);
create index messages_account_created on messages (account_id, created_at);

create table recipients (
    id bigserial primary key,
    message_id text not null references messages (id) on delete cascade,
    account_id text not null,
    address text not null,
    domain text not null,                    -- lower-case A-label
    state text not null default 'queued'
        check (state in ('queued', 'sending', 'deferred', 'delivered', 'bounced', 'suppressed')),
    attempts int not null default 0,
    next_attempt_at timestamptz not null default now(),
    lease_until timestamptz,
    lease_token uuid,
    expires_at timestamptz not null,
    smtp_code int,
    enhanced_status text,
    response text,
    mx_host text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
create index recipients_due on recipients (next_attempt_at) where state in ('queued', 'deferred');
create index recipients_leased on recipients (lease_until) where state = 'sending';
create index recipients_message on recipients (message_id);

create table delivery_attempts (
    id bigserial primary key,
    recipient_id bigint not null references recipients (id) on delete cascade,
    attempt int not null,
    outcome text not null check (outcome in ('delivered', 'deferred', 'failed')),
    mx_host text,
    smtp_code int,
    enhanced_status text,
    response text,
    started_at timestamptz not null,
    duration_ms int not null
);
create index delivery_attempts_recipient on delivery_attempts (recipient_id);

create table events (
    id bigserial primary key,
    account_id text not null,
    message_id text,
    recipient_id bigint,
    event_type text not null check (event_type in (
        'send', 'reject', 'delivery', 'bounce', 'complaint', 'delivery_delay', 'rendering_failure')),
    recipient text,
    bounce_type text,                        -- Permanent / Transient / Undetermined
    bounce_subtype text,
    detail jsonb,
    created_at timestamptz not null default now()
);
create index events_account_created on events (account_id, created_at);
create index events_message on events (message_id);

-- 15-minute rollups of events for GetSendStatistics; rolled_up_to is the
-- highest events.id already counted.
create table send_statistics (
    account_id text not null,
    period_start timestamptz not null,
    delivery_attempts bigint not null default 0,
    bounces bigint not null default 0,
    complaints bigint not null default 0,
    rejects bigint not null default 0,
    primary key (account_id, period_start)
);
create table rollup_state (
    name text primary key,
    last_event_id bigint not null default 0
);
insert into rollup_state (name) values ('send_statistics');

create table suppressions (
    account_id text not null references accounts (id) on delete cascade,
    address text not null,                   -- lower-case
    reason text not null check (reason in ('BOUNCE', 'COMPLAINT')),
    message_id text,
    feedback_id text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (account_id, address)
);
