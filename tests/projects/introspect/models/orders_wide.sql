-- Its select list is the parent's columns, read through the adapter while compiling.
{%- set columns = adapter.get_columns_in_relation(ref('stg_orders')) %}
select {% for column in columns %}{{ column.name }}{{ ", " if not loop.last }}{% endfor %}
from {{ ref('stg_orders') }}
