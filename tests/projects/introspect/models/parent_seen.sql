-- Asks dbt's relation cache whether its parent exists, which sends no request the capture could notice. In one
-- `dbt build` the parent is built first, so it always exists here; a capture split between dbt processes, with
-- the parent built by the other one, must answer the same.
{%- set parent = load_relation(ref('stg_orders')) %}
select {{ 'true' if parent is not none else 'false' }} as stg_orders_exists, count(*) as orders
from {{ ref('stg_orders') }}
