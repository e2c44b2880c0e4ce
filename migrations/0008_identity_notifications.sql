-- SetIdentityNotificationTopic destinations name the identity they serve. Only
-- mail sent from that identity reaches them, an address's own topic taking
-- precedence over its domain's as in SES, and they receive SES notification
-- JSON (notificationType) rather than event-publishing JSON.
alter table event_destinations add column identity text;

update event_destinations
set identity = lower(substring(name from '^identity-notification:[^:]+:(.*)$'))
where configuration_set is null and name like 'identity-notification:%';

create or replace function fan_out_event() returns trigger language plpgsql as $$
begin
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
    -- The sending address: Source may carry a display name.
    cross join lateral (
        select lower(coalesce(substring(m.source from '<([^<>]*)>\s*$'), m.source))
            as address
    ) sender
    where d.account_id = new.account_id
      and d.enabled
      and new.event_type = any (d.matching_event_types)
      and (d.configuration_set is null or d.configuration_set = m.configuration_set)
      and m.interface is distinct from 'system'
      and (
        d.identity is null
        or d.identity = sender.address
        or (
            d.identity = split_part(sender.address, '@', 2)
            and not exists (
                select 1 from event_destinations e
                where e.account_id = d.account_id
                  and e.enabled
                  and e.identity = sender.address
                  and new.event_type = any (e.matching_event_types)
            )
        )
      )
    on conflict do nothing;
    return null;
end $$;
