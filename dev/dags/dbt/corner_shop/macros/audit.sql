{# The audit table lives in the target dataset; hooks and models append one row per event. #}
{% macro audit_relation() -%}
  `{{ target.project }}`.`{{ target.dataset }}`.`run_audit`
{%- endmacro %}

{% macro audit_insert(event, node_name) -%}
  insert into {{ audit_relation() }} (event, node_name, recorded_at)
  values ('{{ event }}', '{{ node_name }}', current_timestamp())
{%- endmacro %}

{# on-run-start: a selection may skip every node of the target dataset, so create it here too. #}
{% macro corner_shop_setup() -%}
  create schema if not exists `{{ target.project }}`.`{{ target.dataset }}`;
  create table if not exists {{ audit_relation() }} (event string, node_name string, recorded_at timestamp);
  create or replace table `{{ target.project }}`.`{{ target.dataset }}`.`shop_stores` as
  select 1 as store_id, 'High Street' as store_name, 'north' as region
  union all select 2, 'Station Road', 'south'
  union all select 3, 'Market Square', 'north';
{%- endmacro %}
