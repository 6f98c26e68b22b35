{# The project's own dbt_utils.star: the relation's columns (from INFORMATION_SCHEMA), minus `except`. #}
{% macro star(relation, except=[]) -%}
  {%- if not execute -%}*{%- else -%}
  {%- set query -%}
    select column_name from `{{ relation.database }}`.`{{ relation.schema }}`.INFORMATION_SCHEMA.COLUMNS
    where table_name = '{{ relation.identifier }}' order by ordinal_position
  {%- endset -%}
  {%- set names = run_query(query).columns[0].values() | reject('in', except) | list -%}
  {{ names | join(', ') if names else '*' }}
  {%- endif -%}
{%- endmacro %}
