-- Introspects a table that no node of the project builds: it stays captured at setup.
select {{ star(source('ext', 'lookup')) }} from {{ source('ext', 'lookup') }}
