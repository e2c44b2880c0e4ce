-- Sesame's own mail (verification links) belongs to the account it serves but
-- is not the account's mail: its events never reach the account's webhooks.
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
    where d.account_id = new.account_id
      and d.enabled
      and new.event_type = any (d.matching_event_types)
      and (d.configuration_set is null or d.configuration_set = m.configuration_set)
      and m.interface is distinct from 'system'
    on conflict do nothing;
    return null;
end $$;
