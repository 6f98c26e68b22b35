-- Reads the table that the project's on-run-start hook (re)creates: the project's only source.
select
    store_id,
    store_name,
    region
from {{ source('shop_ops', 'shop_stores') }}
