-- A user's timeline reads each key's latest changes by the primary key (key, version):
-- the (key, at) index cost a quarter of the store's time per stored change
-- (loadtest/store_bench.py) and served nothing else.
DROP INDEX omnigrid_events_key_at
