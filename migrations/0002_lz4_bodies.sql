-- Message bodies compress about 2:1 and lz4 costs a third of pglz's CPU.
do $$
begin
    alter table messages alter column raw set compression lz4;
exception when others then
    raise notice 'lz4 unavailable; message bodies keep the default compression';
end $$;
