{# on-run-start: the raw tables every node reads, recreated with the same rows on each run. #}
{% macro mini_shop_raw() -%}
  create schema if not exists `{{ target.project }}`.`{{ target.dataset }}`;
  create or replace table `{{ target.project }}`.`{{ target.dataset }}`.`raw_customers` as
  select 1 as customer_id, 'Ada' as first_name, date '2024-01-01' as signup_date
  union all select 2, 'Bram', date '2024-01-03'
  union all select 3, 'Cleo', date '2024-01-07';
  create or replace table `{{ target.project }}`.`{{ target.dataset }}`.`raw_orders` as
  select 10 as order_id, 1 as customer_id, 1250 as amount_cents
  union all select 11, 1, 300
  union all select 12, 3, 4999;
{%- endmacro %}
