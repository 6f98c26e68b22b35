-- One column per region found in the parent (dbt_utils.pivot over get_column_values, by hand).
{%- set regions = [] %}
{%- if execute %}
  {%- set regions = run_query("select distinct region from " ~ ref('stg_customers') ~ " order by region").columns[0].values() %}
{%- endif %}
select
  {%- for region in regions %}
  countif(region = '{{ region }}') as customers_{{ region }},
  {%- endfor %}
  count(*) as customers
from {{ ref('stg_customers') }}
